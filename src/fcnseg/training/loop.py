"""The training loop: epochs of optimizer steps, validation and checkpoints.

``run_loop`` trains epochs until the run's length, validating and saving as configured;
``train_one_epoch`` takes the optimizer steps of one epoch; ``train_step`` is one of them
(batch, forward, backward, step). The features around the loop are hooks (``hooks.py``),
called at its named points: the loop knows nothing of them.

An epoch's order is a function of (seed, epoch); the loader draws from a generator of its
own and the dataset seeds augmentation by (seed, epoch, index), so nothing draws from the
global generators but the training step itself and a resumed run trains as one never
interrupted.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import pad_collate
from ..metrics import METRIC_NAMES
from ..scoring import model_inputs, model_targets, score, task_metrics
from . import clock
from .distributed import Context, all_reduce_max, gather_values
from .evaluate import autocast, batch_size, eval_loader, evaluate, to_device
from .hooks import STOP_REASONS, StepInfo
from .resume import diverged, save
from .state import Laps, Position, Progress, Run, total_steps

__all__ = ["run_loop", "train_one_epoch", "train_step", "validate", "evaluate_on"]


def run_loop(run: Run, progress: Progress) -> str:
    """Epochs until the run's length, evaluating and saving as configured; the stop reason.

    A run stopped early (time limit, callback) is evaluated and saved at the step where it
    stopped, and is not marked finished: resuming it trains on to its length."""
    try:
        for hook in run.hooks:
            hook.on_train_start(run, progress)
        return _epochs(run, progress)
    finally:
        for hook in run.hooks:
            hook.on_train_end(run, progress)


def _epochs(run: Run, progress: Progress) -> str:
    position = progress.position
    while position.iteration < total_steps(run, position):
        stop = train_one_epoch(run, progress)
        if stop == "interrupted":
            if position.iteration < total_steps(run, position):
                save(run, progress, finished=False)  # no validation: the user is waiting
                return stop
            stop = None  # that was the last step: finish as usual
        epoch_done = position.step_in_epoch >= run.steps_per_epoch
        if epoch_done:
            progress.epoch_done()
            if stop is None:
                stop = _stop_between_steps(run, progress)  # no new epoch
        complete = position.iteration >= total_steps(run, position)
        if complete:  # a stop asked at the last step: the schedule ran out all the same
            stop = None
        due = epoch_done and position.epoch % run.config.eval_every == 0
        if complete or stop is not None or due:
            validate(run, progress)
        save(run, progress, finished=complete)
        if stop is None and not complete:
            stop = _stop_between_steps(run, progress)  # the evaluation took the rest
            if stop is not None and not due:
                validate(run, progress)
                save(run, progress, finished=False)
        if stop is not None:
            return stop
    return "finished"


def train_one_epoch(run: Run, progress: Progress) -> str | None:
    """Optimizer steps to the end of the epoch (or the last iteration); a stop reason or
    None."""
    config, position = run.config, progress.position
    batches = _epoch_batches(run, position)
    run.model.train()
    progress.window.reset()
    while position.step_in_epoch < run.steps_per_epoch and position.iteration < total_steps(
        run, position
    ):
        started = clock.now()
        lr = run.optimizer.param_groups[0]["lr"]  # this step's (the schedule then moves)
        laps = Laps()
        micro = [next(batches) for _ in range(config.accumulate)]
        laps.lap("data")
        loss, images = train_step(run, position, micro, laps)
        progress.step_done()
        for hook in run.hooks:
            hook.on_optimizer_step(run, progress)
        laps.lap("after_step")  # the moving average of the weights
        info = StepInfo(
            iteration=position.iteration,
            epoch=position.epoch,
            loss=loss,
            lr=lr,
            images=images * run.context.world_size,
            seconds=clock.now() - started,
            parts=laps.parts,
        )
        progress.window.add(info)
        votes = [hook.on_step_end(run, progress, info) for hook in run.hooks]
        progress.window.add_part("log", laps.lap("log"))
        stop = _agreed(votes, run.context)
        if stop is not None:
            return stop
    return None


def _stop_between_steps(run: Run, progress: Progress) -> str | None:
    return _agreed([hook.should_stop(run, progress) for hook in run.hooks], run.context)


def _agreed(votes: list[str | None], context: Context) -> str | None:
    """The strongest stop reason of every hook on every rank, the same on every rank."""
    strongest = max((STOP_REASONS.index(v) + 1 for v in votes if v is not None), default=0)
    reason = int(all_reduce_max(float(strongest), context))  # every rank stops at one step
    return STOP_REASONS[reason - 1] if reason else None


def _epoch_batches(run: Run, position: Position) -> Iterator[tuple[Any, Any]]:
    """This rank's micro-batches of the current epoch, from the current position on.

    The order is a function of (seed, epoch); the loader draws from a generator of its own
    and the dataset seeds augmentation by (seed, epoch, index)."""
    config = run.config
    _set_epoch(run.data.train, position.epoch)
    run.sampler.set_epoch(position.epoch)
    order = list(run.sampler)
    size = config.batch_size
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    batches = batches[: run.steps_per_epoch * config.accumulate]
    loader = DataLoader(
        run.data.train,
        batch_sampler=batches[position.step_in_epoch * config.accumulate :],
        num_workers=config.num_workers,
        collate_fn=pad_collate,
        pin_memory=run.context.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed + position.epoch),
        persistent_workers=False,
    )
    return iter(loader)


def _set_epoch(dataset: Dataset, epoch: int) -> None:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch)  # seeded augmentation varies by epoch


def train_step(
    run: Run, position: Position, micro: list[tuple[Any, Any]], laps: Laps | None = None
) -> tuple[float, int]:
    """One optimizer step over ``accumulate`` micro-batches; (mean loss, images on this rank).

    Gradients average over micro-batches and (through DDP) ranks, as Caffe's iter_size does.
    The losses add up on the device: the step reads them once (one host sync, one collective
    under DDP), after backward and before the optimizer moves the weights. ``laps`` takes
    the seconds of each part (to_device, forward with the loss, backward, sync, optimizer).
    """
    laps = laps or Laps()
    device, spec = run.context.device, run.spec
    run.optimizer.zero_grad(set_to_none=True)
    total, images = torch.zeros((), dtype=torch.float64, device=device), 0
    for index, (image, label) in enumerate(micro):
        inputs = to_device(model_inputs(image, spec), device)
        targets = to_device(model_targets(label, spec), device)
        laps.lap("to_device")
        last = index == len(micro) - 1
        with _no_sync(run.model, skip=not last):  # DDP all-reduces on the last only
            with autocast(device, run.amp):
                loss = run.criterion(score(run.model, inputs), targets)
            total += loss.detach()
            laps.lap("forward")
            run.scaler.scale(loss / len(micro)).backward()
            laps.lap("backward")
        images += batch_size(inputs)
    value = _finite_loss(run, position, total)
    laps.lap("sync")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    laps.lap("optimizer")
    return value / len(micro), images


def _finite_loss(run: Run, position: Position, total: torch.Tensor) -> float:
    """This rank's summed loss as a number; stops every rank when any rank's is not finite
    (the weights are still those of the last step)."""
    losses = gather_values(total, run.context)
    value = losses[run.context.rank]
    bad = [loss for loss in losses if not math.isfinite(loss)]
    if bad:
        diverged(run, position, f"loss is {value if not math.isfinite(value) else bad[0]}")
    return value


def _no_sync(model: nn.Module, *, skip: bool):
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def validate(run: Run, progress: Progress) -> None:
    """Evaluate on the validation set (every rank its shard); the hooks log the summed
    metrics."""
    context = run.context
    for hook in run.hooks:
        hook.on_validation_start(run, progress)
    confusion = evaluate_on(run, run.data.val, progress=context.is_main and sys.stdout.isatty())
    metrics = task_metrics(confusion)
    tasks = run.spec.task_names
    if len(tasks) == 1:
        metrics = summary = metrics[tasks[0]]
    else:  # the first task's four numbers on top, for the curves and the best checkpoint
        summary = {**{key: metrics[tasks[0]][key] for key in METRIC_NAMES}, **metrics}
    matrices = {task: matrix.reduced() for task, matrix in confusion.matrices.items()}
    progress.validated(metrics, matrices, summary["mean_iu"])
    for hook in run.hooks:
        hook.on_validation_end(run, progress, summary)


def evaluate_on(run: Run, dataset: Dataset, *, progress: bool):
    """The confusion of the model on ``dataset`` (this rank's shard), as validation runs."""
    config, context = run.config, run.context
    loader = eval_loader(
        dataset, context, batch_size=config.val_batch_size, num_workers=config.num_workers
    )
    return evaluate(
        run.net,
        loader,
        ignore_index=run.data.ignore_index,
        device=context.device,
        amp_dtype=run.amp,
        progress=progress,
    )
