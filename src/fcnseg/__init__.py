"""fcnseg: Fully Convolutional Networks for semantic segmentation.

>>> import fcnseg
>>> model = fcnseg.build_model("fcn8s_vgg16", num_classes=21)
>>> segmenter = fcnseg.Segmenter.from_checkpoint("runs/demo/fcn8s/best.pt")
"""

from . import dense, surgery
from .inference import Segmenter
from .models import FCN, build_model, list_models

__version__ = "0.1.0"
__all__ = ["FCN", "Segmenter", "build_model", "list_models", "dense", "surgery", "__version__"]
