"""The two recipes' defaults, and the paper's learning rates.

- ``paper``: the reference's "heavy" online learning: batch 1 whole images, no
  augmentation, SGD momentum 0.99, weight decay 5e-4, biases at 2x lr without decay, fixed
  lr 1e-10 / 1e-12 / 1e-14 for FCN-32s / 16s / 8s (1e-10 for 8s at-once) on the summed loss,
  100k iterations, fixed deconvolutions.
- ``modern``: batches of 8 through the mixed-size collate, scale/crop/flip/jitter
  augmentation, SGD (lr 0.01, momentum 0.9) or AdamW (lr 1e-3), poly schedule with warm-up,
  mean loss, AMP where it pays (``amp="auto"``: bf16 or fp16 on CUDA, off on CPU).
"""

from __future__ import annotations

from typing import Any

from .model import model_variant

__all__ = ["RECIPES", "PAPER_LR", "RANDOM_SPLIT", "SPLIT_KEYS", "ADAMW_WEIGHT_DECAY", "default_lr"]

# val_split = "random": validate on val_fraction of the training images, drawn with split_seed
RANDOM_SPLIT = "random"
# keys whose value "none" (any case; also as a TOML string) means no split: every image
SPLIT_KEYS = ("train_split", "val_split")

# The paper's learning rates for the summed loss (fcn.berkeleyvision.org solver.prototxt).
PAPER_LR = {"32s": 1e-10, "16s": 1e-12, "8s": 1e-14, "8s-atonce": 1e-10}
# AdamW's decoupled decay, where the recipe's (an SGD value) would be too weak
ADAMW_WEIGHT_DECAY = 0.01

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "batch_size": 1,  # whole images, one at a time
        "optimizer": "sgd",
        "momentum": 0.99,  # "heavy" momentum: with batch 1 it averages ~100 images
        "weight_decay": 5e-4,
        "bias_lr_mult": 2.0,  # Caffe's lr_mult 2 on biases
        "bias_decay": False,  # and decay_mult 0
        "schedule": "fixed",
        "warmup_iters": 0,
        "loss_reduction": "sum",  # SoftmaxWithLoss normalize: false
        "max_iters": 100_000,
        "crop_size": None,
        "scale_range": None,
        "flip": False,
        "jitter": False,
        "amp": "off",
    },
    "modern": {
        "batch_size": 8,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "bias_lr_mult": 1.0,
        "bias_decay": False,
        "schedule": "poly",
        "warmup_iters": 100,
        "loss_reduction": "mean",
        "scale_range": [0.5, 2.0],
        "flip": True,
        "jitter": True,
        "amp": "auto",
    },
}


def default_lr(recipe: str, model: str, optimizer: str) -> float:
    """The paper's lr for the model's variant (a summed loss), else a mean loss's usual lr."""
    if recipe == "paper":
        return PAPER_LR[model_variant(model)]
    return 1e-3 if optimizer == "adamw" else 0.01
