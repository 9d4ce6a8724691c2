"""fcnseg: Fully Convolutional Networks for semantic segmentation.

>>> import fcnseg
>>> model = fcnseg.build_model("fcn8s_vgg16", num_classes=21)
>>> model.spec.to_dict()["variant"]
'8s'
>>> segmenter = fcnseg.Segmenter.from_checkpoint("runs/demo/fcn8s/best.pt")
"""

from . import dense, surgery
from .builder import build_model, model_info
from .inference import Segmenter
from .modelfile import load_weights, save_weights
from .models import FCN, ModelSpec, list_models

__version__ = "0.2.0"
__all__ = [
    "FCN",
    "ModelSpec",
    "Segmenter",
    "build_model",
    "dense",
    "list_models",
    "load_weights",
    "model_info",
    "save_weights",
    "surgery",
    "__version__",
]
