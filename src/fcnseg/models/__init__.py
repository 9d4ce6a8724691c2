"""FCN models: backbones, the FCN head, geometry, the spec and the model registry.

``fcnseg.build_model`` (``fcnseg.builder``) turns a registered name or a ``ModelSpec`` into
a model, loading weights where the spec asks.
"""

from .fcn import FCN, FCNHead
from .normalization import LogDepth, Normalization
from .registry import list_models, register_model, registered_spec
from .spec import InputSpec, ModelSpec, SpecError, TaskSpec

__all__ = [
    "FCN",
    "FCNHead",
    "InputSpec",
    "LogDepth",
    "ModelSpec",
    "Normalization",
    "SpecError",
    "TaskSpec",
    "list_models",
    "register_model",
    "registered_spec",
]
