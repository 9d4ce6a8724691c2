"""Training and evaluation: the loop, checkpoints, evaluation and DDP helpers."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluate import evaluate
from .hooks import Hook
from .stages import NonFiniteLossError, StepInfo, TrainResult, train

__all__ = [
    "train",
    "TrainResult",
    "StepInfo",
    "Hook",
    "NonFiniteLossError",
    "evaluate",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]
