"""fcnseg: Fully Convolutional Networks for semantic segmentation.

>>> import fcnseg
>>> model = fcnseg.build_model("fcn8s_vgg16", num_classes=21)
"""

from .models import FCN, build_model, list_models

__version__ = "0.1.0"
__all__ = ["FCN", "build_model", "list_models", "__version__"]
