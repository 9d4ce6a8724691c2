"""FCN models: backbones, the FCN head, geometry and the model registry."""

from . import fusion  # noqa: F401  (registers the NYUDv2 RGB-D, HHA and RGB-HHA nets)
from .fcn import FCN, FCNHead
from .normalization import Normalization
from .registry import build_model, list_models, register_model

__all__ = ["FCN", "FCNHead", "Normalization", "build_model", "list_models", "register_model"]
