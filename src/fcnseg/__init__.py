"""fcnseg: Fully Convolutional Networks for semantic segmentation.

>>> import fcnseg
>>> model = fcnseg.build_model("fcn8s_vgg16", num_classes=21)
>>> model.spec.to_dict()["variant"]
'8s'
>>> segmenter = fcnseg.Segmenter.from_checkpoint("runs/demo/fcn8s/best.pt")
>>> trained = fcnseg.Segmenter.from_pretrained("fcn8s_efficientnet_lite0.camvid")

``build_model`` builds any registered model, untrained or with the trained weights of the
zoo (``weights="camvid"``); ``pretrained()`` lists the zoo's entries with their cards.
"""

from . import dense, surgery
from .builder import model_info
from .inference import Segmenter
from .modelfile import load_weights, save_weights
from .models import FCN, ModelSpec, list_models
from .version import __version__
from .zoo import build_model, pretrained

__all__ = [
    "FCN",
    "ModelSpec",
    "Segmenter",
    "build_model",
    "dense",
    "list_models",
    "load_weights",
    "model_info",
    "pretrained",
    "save_weights",
    "surgery",
    "__version__",
]
