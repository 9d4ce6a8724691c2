"""Optimizer, learning-rate schedule and mixed precision, as the recipes set them.

The reference (Caffe) gives biases twice the learning rate and no weight decay
(``lr_mult: 2, decay_mult: 0``); its fixed deconvolutions have ``lr_mult: 0``, which here means
``requires_grad=False``, so they never reach the optimizer. Modern recipes add poly or cosine
decay after a linear warm-up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from ..devices import native_cuda_bf16

__all__ = [
    "param_groups",
    "build_optimizer",
    "LRSchedule",
    "build_scheduler",
    "amp_dtype",
]


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Weights at lr with decay; biases at ``bias_lr_mult`` x lr, decayed only with
    ``bias_decay`` (Caffe's lr_mult 2, decay_mult 0); normalisation scales at lr, no decay.
    Frozen parameters (the fixed deconvolutions) are left out."""
    groups: dict[str, list[nn.Parameter]] = {"weight": [], "bias": [], "norm": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.endswith(".bias"):
            groups["bias"].append(parameter)
        elif parameter.dim() <= 1:
            groups["norm"].append(parameter)
        else:
            groups["weight"].append(parameter)
    settings = {
        "weight": (config.lr, config.weight_decay),
        "bias": (config.lr * config.bias_lr_mult, config.weight_decay if config.bias_decay else 0),
        "norm": (config.lr, 0.0),
    }
    return [
        {"params": params, "lr": settings[name][0], "weight_decay": settings[name][1], "name": name}
        for name, params in groups.items()
        if params
    ]


# Each optimizer and schedule of ``fcnseg.solver``, by its name there.
OPTIMIZER_OF: dict[str, Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, config: torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum),
    "adamw": lambda groups, config: torch.optim.AdamW(groups, lr=config.lr),
}
DECAY_OF: dict[str, Callable[[float, float], float]] = {  # (progress 0..1, power) -> factor
    "fixed": lambda progress, power: 1.0,
    "poly": lambda progress, power: (1.0 - progress) ** power,
    "cosine": lambda progress, power: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZER_OF[config.optimizer](param_groups(model, config), config)


@dataclass
class LRSchedule:
    """The lr factor at an optimizer step: fixed, poly ``(1 - t/T)^power`` or cosine, times
    a linear warm-up from ``warmup_factor`` over the first ``warmup`` steps.

    A plain-data callable: LambdaLR saves its fields, so the schedule resumes exactly."""

    kind: str
    total: int
    warmup: int = 0
    power: float = 0.9
    warmup_factor: float = 0.001

    def __call__(self, step: int) -> float:
        progress = min(step, self.total) / max(self.total, 1)
        factor = DECAY_OF[self.kind](progress, self.power)
        if step < self.warmup:
            factor *= self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup
        return factor


def fit_warmup(config: TrainConfig, total_iters: int) -> tuple[TrainConfig, str | None]:
    """A warm-up longer than half the run is scaled to a tenth of it, with a note saying so:
    100 warm-up steps in a 40-step run left the lr at a tenth of the one set (1.07e-4 for
    lr = 1e-3) and never let the schedule decay."""
    warmup = config.warmup_iters or 0
    if 2 * warmup <= total_iters:
        return config, None
    fitted = total_iters // 10
    share = "all" if warmup >= total_iters else "most"
    note = (
        f"warm-up: {warmup} steps would take {share} of this {total_iters}-step run (lr "
        f"{config.lr:g} barely reached): scaled to {fitted} steps, a tenth of the run; set "
        f"warmup_iters (at most {total_iters // 2}) to choose"
    )
    return dataclasses.replace(config, warmup_iters=fitted), note


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = LRSchedule(config.schedule, total_iters, config.warmup_iters, config.poly_power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: bf16 on CPU, fp16 or bf16 on CUDA."""
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None  # bf16 on CPU pays only on CPUs with bf16 units: ask for it by name
        return torch.bfloat16 if native_cuda_bf16() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp = fp16 needs a CUDA device: use amp = bf16 on CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16

