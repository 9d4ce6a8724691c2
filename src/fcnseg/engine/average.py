"""Weight averaging: an exponential moving average (EMA) of the weights as they train.

With ``ema_decay = d`` (TrainConfig), after optimizer step t every floating-point entry of
the model's state (weights and batch-norm statistics) moves as

    average <- d_t * average + (1 - d_t) * trained,    d_t = min(d, (1 + t) / (10 + t))

so the first steps, far from where training ends, fade out within a few dozen steps, and
later the average spans about 1 / (1 - d) steps. Integer entries (``num_batches_tracked``)
are copied. Validation, best.pt and the weights of last.pt are the average (what is
measured is what is deployed); last.pt also keeps the trained weights, to resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["WeightAverage", "decay_at"]


def decay_at(decay: float, step: int) -> float:
    """The decay after optimizer step ``step`` (1 for the first): short memory early on."""
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    """The moving average of ``model``'s state, kept beside it (same device and layout)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.state = {key: value.detach().clone() for key, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average toward ``model``'s state after optimizer step ``step``."""
        weight = 1.0 - decay_at(self.decay, step)
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:
                average.copy_(value)

    @torch.no_grad()
    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take a saved average (last.pt's weights), keeping this one's devices and layouts."""
        for key, average in self.state.items():
            average.copy_(state[key])

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its trained weights after it."""
        trained = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(trained)
