"""Training configuration: one flat dataclass, flat TOML/JSON files, ``key=value`` overrides.

- ``schema``: ``TrainConfig``, every field and its default;
- ``recipes``: the "paper" and "modern" recipes' defaults, the paper's learning rates;
- ``parse``: files, overrides, literals and other tools' key names, coerced to field types;
- ``checks``: choices, ranges and combinations, checked once per config built;
- ``model``: the model options a run may set, and what a registered model's spec says of it.

A config file names only what differs from the defaults; ``recipe`` fills the rest, and
``TrainConfig.resolved()`` writes it in: that is what a run saves as ``config.json``.
"""

from .errors import ConfigError
from .model import MODEL_OPTIONS, check_model_options, model_variant, stage_models
from .parse import from_dict, load_config, parse_literal, parse_overrides
from .recipes import PAPER_LR, RANDOM_SPLIT, RECIPES, SPLIT_KEYS
from .schema import TrainConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "RECIPES",
    "PAPER_LR",
    "RANDOM_SPLIT",
    "SPLIT_KEYS",
    "load_config",
    "from_dict",
    "parse_overrides",
    "parse_literal",
    "model_variant",
    "stage_models",
    "check_model_options",
    "MODEL_OPTIONS",
]
