"""Weight averaging: an exponential moving average (EMA) of the weights as they train.

With ``ema_decay = d`` (TrainConfig), after optimizer step t every floating-point entry of
the model's state (weights and batch-norm statistics) moves as

    average <- d_t * average + (1 - d_t) * trained,    d_t = min(d, (1 + t) / (10 + t))

so the first steps, far from where training ends, fade out within a few dozen steps, and
later the average spans about 1 / (1 - d) steps. Integer entries (``num_batches_tracked``)
are copied. Validation, best.pt and the weights of last.pt are the average (what is
measured is what is deployed); last.pt also keeps the trained weights, to resume.

``WeightAveraging`` is the feature as one hook of the training loop: it moves the average
after every step, validates it, saves it, restores it, and at the end validates the trained
weights once beside it (log.jsonl "trained", metrics.json) to show what averaging gained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..modelfile import ModelRecord
from ..scoring import task_metrics
from .evaluate import format_metrics
from .hooks import Hook
from .loop import evaluate_on
from .resume import TRAINED_STATE
from .state import Progress, Run

__all__ = ["WeightAverage", "WeightAveraging", "decay_at"]


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
        current = model.state_dict()
        floats = [key for key, average in self.state.items() if average.is_floating_point()]
        averages = [self.state[key] for key in floats]
        torch._foreach_lerp_(averages, [current[key] for key in floats], weight)  # one launch
        for key, average in self.state.items():
            if not average.is_floating_point():
                average.copy_(current[key])

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


class WeightAveraging(Hook):
    """``ema_decay``: the averaged weights are validated, kept in best.pt and last.pt, and
    deployed; the trained weights go on training (last.pt keeps them to resume)."""

    def __init__(self, average: WeightAverage) -> None:
        self.average = average
        self._applied = ExitStack()

    def on_optimizer_step(self, run: Run, progress: Progress) -> None:
        self.average.update(run.net, progress.position.iteration)

    def on_validation_start(self, run: Run, progress: Progress) -> None:
        self._applied.enter_context(self.average.applied(run.net))

    def on_validation_end(self, run: Run, progress: Progress, metrics: dict) -> None:
        self._applied.close()

    def on_save(
        self, run: Run, progress: Progress, record: ModelRecord, *, resumable: bool
    ) -> ModelRecord:
        training = record.training
        if resumable:  # the weights to train on from
            trained = {k: v.detach().cpu() for k, v in run.net.state_dict().items()}
            training = {**(training or {}), TRAINED_STATE: trained}
        averaged = {k: v.detach().cpu() for k, v in self.average.state.items()}
        return dataclasses.replace(record, state_dict=averaged, training=training)

    def on_restore(self, run: Run, progress: Progress, record: ModelRecord) -> None:
        """The saved average; averaging switched on at resume starts from the weights."""
        trained = (record.training or {}).get(TRAINED_STATE)
        self.average.load(record.state_dict if trained is not None else run.net.state_dict())

    def on_end(self, run: Run, progress: Progress, stopped: str) -> None:
        if stopped != "interrupted":
            self._validate_trained(run, progress)

    def _validate_trained(self, run: Run, progress: Progress) -> None:
        """The trained weights validated once at the end, beside the average, so the run
        shows what averaging gained."""
        confusion = evaluate_on(run, run.data.val, progress=False)
        task = run.spec.task_names[0]
        trained = task_metrics(confusion)[task]
        progress.summary["trained"] = trained
        iteration = progress.position.iteration
        run.log.write({"event": "trained", "iteration": iteration, **trained})
        averaged = progress.metrics.get("mean_iu", float("nan"))
        run.feedback.write(
            f"step {iteration}: weight average mean IU {100 * averaged:.1f}; the trained "
            f"weights without it: {format_metrics(trained)}"
        )
