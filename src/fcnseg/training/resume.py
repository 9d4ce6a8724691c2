"""A run to a checkpoint record (``save``: last.pt, best.pt) and back (``restore``).

last.pt holds everything resuming needs: the weights, the optimizer, the schedule, the AMP
scaler, every random generator and the ``Position``; hooks add what their features keep
(``Hook.on_save``) and take it back (``Hook.on_restore``). Checkpoints fall on optimizer
steps. A run whose weights or loss stop being finite stops with ``NonFiniteLossError`` and
keeps its last good last.pt.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..modelfile import load_state, record_of
from . import checkpoint as ckpt
from .distributed import all_reduce_max
from .hooks import Hook, StepInfo
from .state import Position, Progress, Run, total_steps

__all__ = [
    "NonFiniteLossError",
    "TRAINED_STATE",
    "CheckpointEvery",
    "diverged",
    "load_last",
    "restore",
    "restore_scaler",
    "save",
    "stretch_schedule",
    "trained_state",
]

# last.pt's training entry of the weights to train on from, where its weights are not
# those (a moving average's run)
TRAINED_STATE = "trained_state"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def diverged(run: Run, position: Position, what: str) -> None:
    """Stop with a message saying what went wrong and which checkpoint is kept."""
    last = run.run_dir / "last.pt"
    kept = (
        f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
    )
    message = (
        f"{what} after step {position.iteration} (epoch {position.epoch + 1}): training "
        f"stopped and {kept}. Lower lr (now {run.config.lr:g}), use loss_reduction = mean, "
        "or turn amp off"
    )
    run.log.write({"event": "stopped", "reason": what, "iteration": position.iteration})
    raise NonFiniteLossError(message)


def save(run: Run, progress: Progress, *, finished: bool) -> None:
    """last.pt always (every rank's generator states gathered into it); best.pt when the
    latest validation beat the best so far."""
    if all_reduce_max(0.0 if _finite_weights(run.net) else 1.0, run.context) > 0:
        diverged(run, progress.position, "weights became NaN or infinite")  # keep last.pt
    progress.position.finished = finished
    for hook in run.hooks:
        hook.on_save_start(run, progress)
    rng: Any = ckpt.rng_state(run.context.device)
    if run.context.distributed:
        states: list[Any] = [None] * run.context.world_size
        dist.all_gather_object(states, rng)
        rng = states
    if run.context.is_main:
        if progress.new_best:
            ckpt.save_checkpoint(_record(run, progress), run.run_dir / "best.pt")
            progress.new_best = False
        ckpt.save_checkpoint(_record(run, progress, rng=rng), run.run_dir / "last.pt")
    for hook in run.hooks:
        hook.on_save_end(run, progress)


def _finite_weights(model: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()
    )


def _record(run: Run, progress: Progress, *, rng: Any = None) -> ckpt.ModelRecord:
    """The model's record with the run's position; with ``rng`` also everything resuming
    needs (optimizer, schedule, scaler, generators): last.pt, not best.pt."""
    training: dict[str, Any] = {
        "config": run.config.to_dict(),
        **dataclasses.asdict(progress.position),
    }
    if rng is not None:
        training["optimizer"] = run.optimizer.state_dict()
        training["scheduler"] = run.scheduler.state_dict()
        training["scaler"] = run.scaler.state_dict()
        training["rng"] = rng
    tasks = run.spec.task_names
    record = record_of(
        run.model,
        classes={task: run.data.classes[task] for task in tasks},
        palette={task: run.data.palettes[task] for task in tasks},
        ignore_index=run.data.ignore_index,
        metrics=progress.metrics or None,
        confusion=progress.confusion,
        training=training,
    )
    for hook in run.hooks:
        record = hook.on_save(run, progress, record, resumable=rng is not None)
    return record


class CheckpointEvery(Hook):
    """last.pt every ``steps`` optimizer steps, except at an epoch's end (which saves
    anyway)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        position = progress.position
        mid_epoch = position.step_in_epoch < run.steps_per_epoch
        if position.iteration % self.steps == 0 and mid_epoch:
            save(run, progress, finished=False)
        return None


def load_last(run_dir: Path) -> ckpt.ModelRecord:
    """The last.pt of ``run_dir``, to resume from; a clear error when there is none."""
    path = run_dir / "last.pt"
    if not path.is_file():
        raise ckpt.CheckpointError(
            f"cannot resume {run_dir}: it holds no last.pt{_restart(run_dir)}"
        )
    checkpoint = ckpt.load_checkpoint(path)
    if checkpoint.training is None:
        raise ckpt.CheckpointError(f"{path} holds weights only: it cannot resume a run")
    return checkpoint


def _restart(run_dir: Path) -> str:
    """How to start again a run that stopped before its first last.pt (from its config)."""
    config = run_dir / "config.json"
    if not config.is_file():
        return " (was the run started there?)"
    replace = " --overwrite" if (run_dir / "best.pt").is_file() else ""
    return (
        f" (its run stopped before its first one); start it again: fcnseg train --config "
        f"{shlex.quote(str(config))} --run-dir {shlex.quote(str(run_dir))}{replace}"
    )


def trained_state(record: ckpt.ModelRecord) -> dict[str, torch.Tensor]:
    """The weights training goes on from: those saved beside a moving average, else the
    record's own."""
    trained = (record.training or {}).get(TRAINED_STATE)
    return trained if trained is not None else record.state_dict


def restore(run: Run, checkpoint: ckpt.ModelRecord) -> Progress:
    """Weights, optimizer, schedule, scaler, log and generators of ``last.pt``; the progress
    it saved."""
    path = run.run_dir / "last.pt"
    if not checkpoint.spec.same_architecture(run.spec):
        raise ckpt.CheckpointError(
            f"{path} holds {checkpoint.spec.label} {checkpoint.spec.task_classes}, but this run "
            f"builds {run.spec.label} {run.spec.task_classes}: resume with the run's own "
            "config, or start a new run (init_from=... transplants by name)"
        )
    training = checkpoint.training
    load_state(run.model, trained_state(checkpoint), where=path)
    saved = {f.name for f in dataclasses.fields(Position)}
    position = Position(**{k: v for k, v in training.items() if k in saved})
    run.optimizer.load_state_dict(training["optimizer"])
    run.scheduler.load_state_dict(training["scheduler"])
    stretch_schedule(run.scheduler, total_steps(run, position))
    if position.planned_iters:  # a time budget planned the run's length
        run.feedback.retotal(position.planned_iters)
    restore_scaler(run.scaler, training["scaler"])
    run.log.truncate_after(position.iteration)
    states = training["rng"]  # a list under DDP: one per rank; last, as they are left
    rank = run.context.rank
    own = states[rank % len(states)] if isinstance(states, list) else states
    ckpt.set_rng_state(own, run.context.device)
    progress = Progress(position, checkpoint.metrics or {}, checkpoint.confusion)
    for hook in run.hooks:
        hook.on_restore(run, progress, checkpoint)
    return progress


def restore_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """The saved loss scale, if there is one: a run saved with the scaler off (amp off or
    bf16) saved an empty state, so resumed with fp16 its scaler starts at its initial
    scale, as a new run's does."""
    if state:
        scaler.load_state_dict(state)


def stretch_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, total: int) -> None:
    """Give the restored schedule this run's length (a finished run resumed with more epochs
    or max_iters trains on) and the optimizer the lr it gives now; a no-op otherwise."""
    schedules = scheduler.lr_lambdas
    if all(getattr(schedule, "total", total) == total for schedule in schedules):
        return
    groups = scheduler.optimizer.param_groups
    for group, base, schedule in zip(groups, scheduler.base_lrs, schedules, strict=True):
        if hasattr(schedule, "total"):
            schedule.total = total
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]
