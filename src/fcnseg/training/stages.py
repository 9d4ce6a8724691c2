"""Training, orchestrated: ``train(config)`` runs one recipe (``config.recipe``) end to end,
or the paper's three stages, and leaves a run folder:

    config.json     the resolved config (every recipe default written in; the model's
                    spec options under ``model_options``)
    log.jsonl       one JSON object per line: "train" records (loss, lr, images/s), "val"
                    records (the four metrics), "start"/"resume"/"stopped" events
    last.pt         the latest checkpoint, with everything resuming needs
    best.pt         the weights with the best validation mean IU so far
    metrics.json    the best and the last validation metrics, per class too
    curves.png      loss, learning rate and validation metrics against iterations
    confusion.png   the row-normalised confusion matrix of the best weights
    overlays/       a few validation images with their labels and predictions
    val_images.txt  with val_split = "random": the ids of the held-out validation images

One run is: ``setup`` builds the ``Run`` (setup.py) or ``restore`` brings back a killed one
(resume.py), ``run_loop`` trains it (loop.py), and its hooks (hooks.py) do everything around
the loop: the moving average, the time budget, the log, the console, Ctrl-C.

Resuming (``resume=True``) restores the model, optimizer, scheduler, AMP scaler, every
random generator and the position inside the epoch, so a run killed at any moment and
resumed ends with the weights of a run never interrupted (on CPU, bit for bit). That rests on
three rules: nothing draws from the global generators except the training step itself
(loaders get their own generator; augmentation is seeded per sample by (seed, epoch,
index)); an epoch's order is a function of (seed, epoch); checkpoints fall on optimizer steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..config import RANDOM_SPLIT, TrainConfig, model_variant, stage_models
from . import checkpoint as ckpt
from .claim import claim_run
from .distributed import Context, barrier, collective_timeouts, setup, teardown
from .feedback import announce
from .hooks import Callback, Hook, StepInfo
from .loop import run_loop
from .resume import NonFiniteLossError, load_last, restore
from .setup import seed_everything
from .setup import setup as setup_run
from .splits import write_val_list
from .state import Progress, Run, total_steps

__all__ = [
    "train",
    "TrainResult",
    "StepInfo",
    "NonFiniteLossError",
    "default_run_dir",
]


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    best_mean_iu: float
    metrics: dict[str, Any]  # the last validation metrics
    best_checkpoint: Path
    last_checkpoint: Path
    stopped: str  # "finished", "time limit", "callback" or "interrupted" (Ctrl-C)


def train(
    config: TrainConfig,
    run_dir: Path | str | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback | Hook] = (),
) -> TrainResult:
    """Train as ``config`` says; ``run_dir`` defaults to ``<output>/<name or model-date>``.

    With ``resume`` the run continues from ``run_dir/last.pt``. Under torchrun every rank
    calls this; rank 0 alone writes. A callback returning True stops training (it is then
    evaluated and saved like a finished run); a ``Hook`` among them joins the run's hooks.
    """
    context = setup(config.device, config.ddp_timeout_seconds)
    try:
        with collective_timeouts(context, config.ddp_timeout_seconds):
            run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
            run_dir = Path(_broadcast(str(run_dir), context))
            with claim_run(run_dir) if context.is_main else contextlib.nullcontext():
                if config.staged:
                    result = _train_stages(config, run_dir, context, resume, callbacks)
                else:
                    result = _train_one(config.resolved(), run_dir, context, resume, callbacks)
            barrier(context)  # a rank leaving gloo while another still talks can abort it
            return result
    finally:
        teardown(context)


def default_run_dir(config: TrainConfig, stem: str | None = None) -> Path:
    name = config.name or f"{stem or config.model}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(config.output) / name


def _broadcast(value: Any, context: Context) -> Any:
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _train_stages(
    config: TrainConfig,
    run_dir: Path,
    context: Context,
    resume: bool,
    callbacks: Sequence[Callback | Hook],
) -> TrainResult:
    """FCN-32s, then FCN-16s from its weights, then FCN-8s from those (Section 4.2): each
    stage transplants the previous stage's final weights; new skip score layers start at 0."""
    previous, result = config.init_from, None
    for index, model in enumerate(stage_models(config.model)):
        lr = None if config.lr is None else config.lr * config.stage_lr_factor**index
        budget = config.time_budget_minutes / 3  # each stage a third of the run's budget
        stage = dataclasses.replace(
            config, model=model, staged=False, init_from=previous, lr=lr, time_budget_minutes=budget
        ).resolved()
        stage_dir = run_dir / f"stage{index + 1}-{model_variant(model)}"
        stage_resume = resume and (stage_dir / "last.pt").is_file()
        if context.is_main:
            print(f"stage {index + 1}/3: {model}" + (f" from {previous}" if previous else ""))
        result = _train_one(stage, stage_dir, context, stage_resume, callbacks)
        previous = str(result.last_checkpoint)
        if result.stopped != "finished":
            break
    assert result is not None
    return result


def _train_one(
    config: TrainConfig,
    run_dir: Path,
    context: Context,
    resume: bool,
    callbacks: Sequence[Callback | Hook],
) -> TrainResult:
    """One run: set up (or restore), loop, report."""
    seed_everything(config, context)
    resumed = load_last(run_dir) if resume else None
    if resumed is not None:  # median class weights were computed once: keep the run's
        saved = resumed.training["config"]
        config = dataclasses.replace(config, class_weights=saved["class_weights"])
    run = setup_run(config, run_dir, context, callbacks, init=resumed is None)
    progress = Progress() if resumed is None else restore(run, resumed)
    position = progress.position
    if position.iteration >= total_steps(run, position):  # nothing to do: the folder stays
        if context.is_main:
            print(
                f"{run_dir} has finished already ({position.iteration} of "
                f"{total_steps(run, position)} steps): nothing to resume; to train on, raise "
                f"epochs or max_iters (fcnseg train --resume {run_dir} epochs=N)"
            )
        return _result(run, progress, "finished")
    extended = position.finished
    position.finished = False  # a finished run given more epochs or steps trains on
    if context.is_main:
        _start_folder(run)
        announce(run, progress, resumed=resumed is not None, extended=extended)
    stopped = run_loop(run, progress)
    for hook in run.hooks:
        hook.on_end(run, progress, stopped)
    return _result(run, progress, stopped)


def _result(run: Run, progress: Progress, stopped: str) -> TrainResult:
    return TrainResult(
        run_dir=run.run_dir,
        iterations=progress.position.iteration,
        best_mean_iu=progress.position.best_mean_iu,
        metrics=progress.metrics,
        best_checkpoint=run.run_dir / "best.pt",
        last_checkpoint=run.run_dir / "last.pt",
        stopped=stopped,
    )


def _start_folder(run: Run) -> None:
    """Create the run folder, remove temporary files a killed run left, write config.json
    (rank 0, once there is something to do)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    for orphan in ckpt.remove_orphans(run.run_dir):
        print(f"removed {orphan.name}, a temporary file left by an interrupted write")
    path = run.run_dir / "config.json"
    with ckpt.writing(path):
        run.config.save(path)
    if run.config.val_split == RANDOM_SPLIT:
        with ckpt.writing(run.run_dir / "val_images.txt"):
            write_val_list(run.run_dir, run.data.val)
