"""The training loop: data, model, criterion, optimizer, train_one_epoch, evaluate, main.

``train(config)`` runs one recipe (``config.recipe``) end to end and leaves a run folder:

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

A run is two things: ``_Run``, what it works with (config, data, model, criterion,
optimizer, schedule, ...), built once by ``_setup`` and never replaced; and ``_Progress``,
where it stands (``_Position``, saved in every checkpoint) and what the latest validation
found. The loop (``_loop`` -> ``train_one_epoch`` -> ``_train_step``) moves the progress on.

Resuming (``resume=True``) restores the model, optimizer, scheduler, AMP scaler, every
random generator and the position inside the epoch, so a run killed at any moment and
resumed ends with the weights of a run never interrupted (on CPU, bit for bit). That rests on
three rules kept below: nothing draws from the global generators except the training step
itself (loaders get their own generator; augmentation is seeded per sample by (seed, epoch,
index)); an epoch's order is a function of (seed, epoch); checkpoints fall on optimizer steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..builder import build_model, resolve_spec
from ..config import RANDOM_SPLIT, ConfigError, TrainConfig, model_variant, stage_models
from ..data import build_dataset, eval_transforms, pad_collate, train_transforms
from ..losses import MultiTaskLoss, median_frequency_weights
from ..metrics import METRIC_NAMES
from ..modelfile import load_state, record_of
from ..models import FCN, ModelSpec
from ..models.backbones import set_activation_checkpointing
from ..models.fusion import late_fusion
from ..models.spec import SpecError, tasks_from
from ..surgery import class_layers, transplant, without_layers
from . import checkpoint as ckpt
from .average import WeightAverage
from .budget import PROBE_STEPS, REPLAN_EVERY, Budget, Costs, minutes, moved, plan_steps
from .claim import claim_run
from .distributed import (
    Context,
    all_mean,
    all_reduce_max,
    barrier,
    collective_timeouts,
    setup,
    teardown,
)
from .evaluate import (
    autocast,
    batch_size,
    eval_loader,
    evaluate,
    format_metrics,
    model_inputs,
    model_targets,
    task_metrics,
    to_device,
)
from .feedback import Feedback
from .optim import amp_dtype, build_optimizer, build_scheduler, fit_warmup
from .runfolder import RunLog, write_report
from .splits import fit_folder_splits, hold_out, write_val_list

__all__ = [
    "train",
    "TrainResult",
    "StepInfo",
    "NonFiniteLossError",
    "default_run_dir",
    "model_spec",
    "train_one_epoch",
]

Callback = Callable[["StepInfo"], "bool | None"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after every optimizer step."""

    iteration: int
    epoch: int
    loss: float
    lr: float
    images: int  # images in this step, over every rank
    seconds: float  # wall time of this step


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    best_mean_iu: float
    metrics: dict[str, Any]  # the last validation metrics
    best_checkpoint: Path
    last_checkpoint: Path
    stopped: str  # "finished", "time limit", "callback" or "interrupted" (Ctrl-C)


# ---------------------------------------------------------------------------------------------
# What a run works with, and where it stands


@dataclass(frozen=True)
class _Data:
    train: Dataset
    val: Dataset
    classes: dict[str, tuple[str, ...]]  # by label set (task): one, or SIFT Flow's two
    palettes: dict[str, list]
    ignore_index: int


@dataclass(frozen=True)
class _Run:
    """What one run works with: built once by ``_setup``, then only read (the model,
    optimizer, schedule and scaler change their own state as they train)."""

    config: TrainConfig
    context: Context
    run_dir: Path
    data: _Data
    model: nn.Module  # DDP-wrapped when distributed
    criterion: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    sampler: DistributedSampler
    steps_per_epoch: int
    total_iters: int  # as configured; a time budget's plan may shorten it (_total)
    log: RunLog
    callbacks: Sequence[Callback]
    interrupt: _Interrupt
    budget: Budget | None  # time_budget_minutes: the schedule's length is planned by time
    feedback: Feedback
    average: WeightAverage | None  # ema_decay: the averaged weights are validated and kept
    notes: tuple[str, ...] = ()  # what the run chose for the user (splits, warm-up), announced
    started: float = field(default_factory=time.monotonic)

    @property
    def net(self) -> FCN:
        return ckpt.unwrap(self.model)

    @property
    def spec(self) -> ModelSpec:
        return self.net.spec


@dataclass
class _Position:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in ``epoch``
    iteration: int = 0  # optimizer steps done in all
    best_mean_iu: float = -1.0
    best_iteration: int = -1
    finished: bool = False
    planned_iters: int = 0  # with a time budget: the steps planned to fit it (0: not yet)
    seconds: float = 0.0  # with a time budget: wall time spent training so far


@dataclass
class _Progress:
    """What changes as the run goes: the position and the latest validation."""

    position: _Position = field(default_factory=_Position)
    metrics: dict[str, Any] = field(default_factory=dict)  # the latest validation's
    confusion: dict[str, torch.Tensor] | None = None  # by task
    new_best: bool = False  # the latest validation beat every earlier one: best.pt is due
    trained: dict[str, Any] = field(default_factory=dict)  # averaging on: the raw weights'

    def step_done(self) -> None:
        self.position.step_in_epoch += 1
        self.position.iteration += 1

    def epoch_done(self) -> None:
        self.position.epoch += 1
        self.position.step_in_epoch = 0

    def validated(self, metrics: dict, confusion: dict, mean_iu: float) -> None:
        self.metrics, self.confusion = metrics, confusion
        position = self.position
        if mean_iu == mean_iu and mean_iu > position.best_mean_iu:  # NaN never is the best
            position.best_mean_iu, position.best_iteration = mean_iu, position.iteration
            self.new_best = True


# ---------------------------------------------------------------------------------------------
# Entry point


def train(
    config: TrainConfig,
    run_dir: Path | str | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train as ``config`` says; ``run_dir`` defaults to ``<output>/<name or model-date>``.

    With ``resume`` the run continues from ``run_dir/last.pt``. Under torchrun every rank
    calls this; rank 0 alone writes. A callback returning True stops training (it is then
    evaluated and saved like a finished run).
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
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _train_stages(
    config: TrainConfig,
    run_dir: Path,
    context: Context,
    resume: bool,
    callbacks: Sequence[Callback],
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
    callbacks: Sequence[Callback],
) -> TrainResult:
    """One run: set up (or restore), loop, report."""
    _seed_everything(config, context)
    resumed = _load_resume(run_dir) if resume else None
    if resumed is not None:  # median class weights were computed once: keep the run's
        saved = resumed.training["config"]
        config = dataclasses.replace(config, class_weights=saved["class_weights"])
    run = _setup(config, run_dir, context, callbacks, init=resumed is None)
    progress = _Progress() if resumed is None else _restore(run, resumed)
    position = progress.position
    if position.iteration >= _total(run, position):  # nothing to do: the folder stays
        if context.is_main:
            print(
                f"{run_dir} has finished already ({position.iteration} of "
                f"{_total(run, position)} steps): nothing to resume; to train on, raise "
                f"epochs or max_iters (fcnseg train --resume {run_dir} epochs=N)"
            )
        return _result(run, progress, "finished")
    extended = position.finished
    position.finished = False  # a finished run given more epochs or steps trains on
    if context.is_main:
        _start_folder(run)
        _announce(run, progress, resumed=resumed is not None, extended=extended)
    with run.interrupt:
        stopped = _loop(run, progress)
    if run.average is not None and stopped != "interrupted":
        _validate_trained(run, progress)
    if context.is_main:
        _report(run, progress)
        run.log.close()
    return _result(run, progress, stopped)


def _result(run: _Run, progress: _Progress, stopped: str) -> TrainResult:
    return TrainResult(
        run_dir=run.run_dir,
        iterations=progress.position.iteration,
        best_mean_iu=progress.position.best_mean_iu,
        metrics=progress.metrics,
        best_checkpoint=run.run_dir / "best.pt",
        last_checkpoint=run.run_dir / "last.pt",
        stopped=stopped,
    )


# ---------------------------------------------------------------------------------------------
# Setting a run up


def _seed_everything(config: TrainConfig, context: Context) -> None:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed = config.seed + context.rank  # ranks differ in dropout and loss-sampling masks
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load_resume(run_dir: Path) -> ckpt.ModelRecord:
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


def _setup(
    config: TrainConfig,
    run_dir: Path,
    context: Context,
    callbacks: Sequence[Callback],
    *,
    init: bool,
) -> _Run:
    """Data, model, criterion, optimizer and schedule. ``init`` starts the weights as
    configured; else (resuming) the checkpoint will."""
    config, notes = fit_folder_splits(config)
    data = _build_data(config)
    spec = model_spec(config, data)
    _check_inputs(config, data, spec)
    if context.is_main:
        _warn_oversized_crop(config, data.train)
    model = _build_model(config, spec, init=init).to(context.device)
    if config.channels_last and not context.distributed:  # DDP: see TrainConfig
        model = model.to(memory_format=torch.channels_last)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    _set_transforms(data.train, _train_transforms(config, model.normalization))
    _set_transforms(data.val, eval_transforms(model.normalization))
    if config.class_weights == "median":  # computed once, then kept in config.json
        config = dataclasses.replace(config, class_weights=_median_weights(config, data, spec))
    sampler = DistributedSampler(
        data.train, num_replicas=context.world_size, rank=context.rank, seed=config.seed
    )
    steps_per_epoch = _steps_per_epoch(config, len(sampler))
    total_iters = config.max_iters or config.epochs * steps_per_epoch
    config, warmup_note = fit_warmup(config, total_iters)
    notes += [warmup_note] if warmup_note else []
    optimizer = build_optimizer(model, config)
    amp = amp_dtype(config.amp, context.device)
    if context.distributed:
        ids = [context.device.index] if context.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    return _Run(
        config=config,
        context=context,
        run_dir=run_dir,
        data=data,
        model=model,
        criterion=_criterion(config, data, spec).to(context.device),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, total_iters),
        scaler=torch.amp.GradScaler(context.device.type, enabled=amp is torch.float16),
        amp=amp,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch,
        total_iters=total_iters,
        log=RunLog(
            run_dir / "log.jsonl", enabled=context.is_main, classes=_by_task_or_one(data.classes)
        ),
        callbacks=callbacks,
        interrupt=_Interrupt(),
        budget=Budget(config.time_budget_minutes * 60) if config.time_budget_minutes else None,
        feedback=Feedback(
            total_iters, steps_per_epoch, every=config.log_every, enabled=context.is_main
        ),
        average=average,
        notes=tuple(notes),
    )


def _start_folder(run: _Run) -> None:
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


class _Interrupt:
    """Ctrl-C (SIGINT) while training: the first asks the loop to stop at the next step
    boundary and save last.pt; a second one stops at once (KeyboardInterrupt). Only the main
    thread can take signals: elsewhere Ctrl-C keeps Python's behaviour."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after this step and saving last.pt (Ctrl-C again to abandon "
            "the step)",
            flush=True,
        )


def model_spec(config: TrainConfig, data: _Data) -> ModelSpec:
    """The spec of ``config.model`` with its ``model_options``. Class counts the model
    leaves open come from the training set's label sets, which must fit every task it
    predicts; ``num_classes`` sets a single-task model's (and must be the dataset's)."""
    options = dict(config.model_options)
    num_classes = options.pop("num_classes", None)
    try:
        spec = resolve_spec(config.model, num_classes=num_classes, require_tasks=False, **options)
    except SpecError as error:
        raise ConfigError(f"model {config.model}: {error}") from None
    if not spec.tasks:
        counts = {task: len(names) for task, names in data.classes.items()}
        spec = dataclasses.replace(spec, tasks=tasks_from(counts))
    for task in spec.tasks:
        if task.name not in data.classes:
            raise ConfigError(
                f"model {config.model} predicts {list(spec.task_names)}, but {config.dataset} "
                f"has no label set {task.name!r}: train it on a dataset with these label sets"
            )
        count = len(data.classes[task.name])
        if task.classes == count:
            continue
        if num_classes is not None:
            raise ConfigError(
                f"num_classes = {num_classes} but {config.dataset} has {count} classes: drop "
                "num_classes (the dataset's count is the default)"
            )
        raise ConfigError(
            f"model {config.model} has {task.classes} {task.name} classes, {config.dataset} "
            f"{count}: use the model made for this dataset"
        )
    return spec


def _check_inputs(config: TrainConfig, data: _Data, spec: ModelSpec) -> None:
    """Fail before training when the dataset's images do not fit the model's inputs (names
    and channel counts), reading one training image."""
    image = _raw_sample(data.train, 0)[0]
    try:
        inputs = model_inputs(image, spec)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    given = {name: int(tensor.shape[0]) for name, tensor in inputs.items()}
    if given != spec.input_channels:
        raise ConfigError(
            f"model {config.model} reads {_channels(spec.input_channels)}, but the images of "
            f"{config.dataset} have {_channels(given)}: set in_channels (or inputs) to the "
            "data's, or train on data with those channels"
        )


def _warn_oversized_crop(config: TrainConfig, dataset: Dataset) -> None:
    """Warn when ``crop_size`` exceeds every training image at the largest scale: every
    sample is then padded to the crop, and the padding costs as much compute as the image
    (512 crops of 64-pixel images train about 15 times slower for nothing)."""
    crop = config.crop_size
    if not crop:
        return
    scale = max(config.scale_range) if config.scale_range else 1.0
    largest = _largest_image(dataset, below=crop / scale)
    if largest is None:
        return
    width, height = largest
    scaled = f", {round(width * scale)}x{round(height * scale)} at scale {scale:g}"
    fit = int(max(width, height) * scale)
    warnings.warn(
        f"crop_size {crop} exceeds every training image (the largest is {width}x{height}"
        f"{scaled if scale != 1 else ''}): each sample is padded to {crop}x{crop}, which "
        f"slows training for nothing; set crop_size={fit} or less",
        stacklevel=2,
    )


def _largest_image(dataset: Dataset, *, below: float) -> tuple[int, int] | None:
    """(width, height) of the training image with the longest side, read from the file
    headers, when every side is shorter than ``below``; None when one is not (the scan stops
    there) or the dataset names no image files."""
    base = _base(dataset)
    samples = getattr(base, "samples", None)
    if not samples:
        return None
    indices = dataset.indices if isinstance(dataset, Subset) else range(len(samples))
    largest = (0, 0)
    for index in indices:
        try:
            with Image.open(samples[index].image) as image:
                size = image.size
        except (OSError, ValueError):  # the reader says what is wrong, when it reads it
            return None
        if max(size) >= below:
            return None
        largest = max(largest, size, key=max)
    return largest


def _channels(inputs: dict[str, int]) -> str:
    return " + ".join(f"{name} {count} channel(s)" for name, count in inputs.items())


def _criterion(config: TrainConfig, data: _Data, spec: ModelSpec) -> MultiTaskLoss:
    """Each task's loss, weighted by ``task_weights`` (1 each: the reference sums SIFT
    Flow's two SoftmaxWithLoss layers); class weights apply to a single-task model."""
    tasks = spec.task_names
    unknown = set(config.task_weights) - set(tasks)
    if unknown:
        raise ConfigError(f"task_weights names {sorted(unknown)}; {config.model} has {list(tasks)}")
    weights = config.class_weights if isinstance(config.class_weights, list) else None
    if weights is not None and len(tasks) > 1:
        raise ConfigError(
            "class_weights apply to single-task models: drop it for "
            f"{config.model} (weigh the tasks with task_weights)"
        )
    return MultiTaskLoss(
        {task: config.task_weights.get(task, 1.0) for task in tasks},
        tasks=tasks,
        reduction=config.loss_reduction,
        ignore_index=data.ignore_index,
        class_weights={tasks[0]: weights} if weights is not None else None,
        sampling=config.loss_sampling,
        sampling_cell=config.sampling_cell,
        loss=config.loss,
        focal_gamma=config.focal_gamma,
    )


def _dataset(config: TrainConfig, part: str) -> Dataset:
    if part == "train":
        name, root, split, options = (
            config.dataset,
            config.root,
            config.train_split,
            config.train_options,
        )
    else:
        name, root, split, options = (
            config.val_dataset or config.dataset,
            config.val_root if config.val_root is not None else config.root,
            config.val_split,
            config.val_options,
        )
    dataset = build_dataset(name, root=root, split=split, **options)
    if len(dataset) == 0:
        raise ConfigError(f"the {part} set ({name}, split {split!r}) holds no images")
    return dataset


def _build_data(config: TrainConfig) -> _Data:
    train_set = _dataset(config, "train")
    if config.val_split == RANDOM_SPLIT:  # the same images read twice: each its transforms
        val_set = _dataset(config, "train")
        train_set, val_set = hold_out(train_set, val_set, config.val_fraction, config.split_seed)
    else:
        val_set = _dataset(config, "val")
    classes, palettes = _label_sets(train_set)
    if not classes:
        raise ConfigError(f"dataset {config.dataset} names no classes: it cannot be trained on")
    if _label_sets(val_set)[0] != classes:
        raise ConfigError(
            f"validation set {config.val_dataset} has other classes than {config.dataset}: "
            "validate on a dataset with the same label set"
        )
    if config.max_val_images is not None and len(val_set) > config.max_val_images:
        val_set = _first(val_set, config.max_val_images)
    return _Data(train_set, val_set, classes, palettes, getattr(train_set, "ignore_index", 255))


def _label_sets(dataset: Dataset) -> tuple[dict[str, tuple[str, ...]], dict[str, list]]:
    """Class names and palettes by label set: ``label_classes`` where the dataset has
    several (SIFT Flow), else its ``classes`` as the one "semantic" set."""
    base = _base(dataset)
    label_classes = getattr(base, "label_classes", None)
    if label_classes:
        palettes = getattr(base, "label_palettes", {})
        return (
            {task: tuple(names) for task, names in label_classes.items()},
            {task: list(palettes.get(task, [])) for task in label_classes},
        )
    classes = tuple(getattr(base, "classes", ()))
    palette = list(getattr(base, "palette", []))
    return ({"semantic": classes} if classes else {}), {"semantic": palette}


def _base(dataset: Dataset) -> Dataset:
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def _first(dataset: Dataset, count: int) -> Subset:
    """The first ``count`` items, a subset of the base dataset (never nested)."""
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, list(dataset.indices)[:count])
    return Subset(dataset, range(count))


def _raw_sample(dataset: Dataset, index: int) -> tuple[Any, Any]:
    """Item ``index`` as read, before any transform."""
    if isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    load = getattr(dataset, "load", None)
    return load(index) if load else dataset[index]


def _set_transforms(dataset: Dataset, transforms: Callable) -> None:
    _base(dataset).transforms = transforms


def _train_transforms(config: TrainConfig, normalization: Callable) -> Callable:
    return train_transforms(
        normalization,
        crop_size=config.crop_size,
        scale=tuple(config.scale_range) if config.scale_range else None,
        flip=bool(config.flip),
        jitter=bool(config.jitter),
        seed=config.seed,
    )


def _build_model(config: TrainConfig, spec: ModelSpec, *, init: bool) -> FCN:
    """The model of ``spec``; ``init`` starts its weights as configured (pretrained
    backbone, ``init_from``, ``init_streams``), else (resuming) the checkpoint will."""
    model = build_model(spec if init else spec.architecture())
    set_activation_checkpointing(model, config.activation_checkpointing)
    if init and config.init_streams:
        _fuse_streams(model, config)
    if init and config.init_from:
        _init_from(model, config)
    return model


def _init_from(model: FCN, config: TrainConfig) -> None:
    """Transplant the ``init_from`` checkpoint's weights by name; score layers made for
    another class count start as a new model's, and the line printed names them."""
    source = ckpt.load_checkpoint(config.init_from)
    fresh = class_layers(source.state_dict, model, heads=_head_names(model))
    report = transplant(model, without_layers(source.state_dict, fresh))
    if not report.copied and not report.coerced:
        raise ConfigError(f"init_from = {config.init_from}: none of its weights fit {config.model}")
    note = ""
    if fresh:
        note = (
            f"; re-initialised for {_class_counts(model.spec)} classes (the checkpoint has "
            f"{_class_counts(source.spec)}): {', '.join(fresh)}"
        )
    print(f"init_from {config.init_from}: {report}{note}")


def _head_names(model: FCN) -> list[str]:
    heads = list(model.task_heads().values())
    return [name for name, module in model.named_modules() if any(module is h for h in heads)]


def _class_counts(spec: ModelSpec) -> str:
    return " / ".join(str(count) for count in spec.task_classes.values())


def _fuse_streams(model: FCN, config: TrainConfig) -> None:
    """Load the late fusion of the ``init_streams`` checkpoints into ``model``: with trained
    RGB and HHA nets it starts as 0.5 x RGB + 0.5 x HHA scores, as the reference initialised
    ``nyud-fcn32s-color-hha`` from its single-stream nets."""
    if not model.late_fusion:
        raise ConfigError(f"init_streams: {config.model} is not a late-fusion model: use init_from")
    inputs = model.spec.input_names
    if set(config.init_streams) != set(inputs):
        raise ConfigError(
            f"init_streams names {sorted(config.init_streams)}, but {config.model} has the "
            f"streams {list(inputs)}: give one checkpoint per stream"
        )
    streams = {name: ckpt.load_checkpoint(config.init_streams[name]).build() for name in inputs}
    weights = model.spec.fusion_weights
    by_stream = None if weights is None else dict(zip(inputs, weights, strict=True))
    fused = late_fusion(streams, weights=by_stream)
    if fused.normalizations != model.normalizations:
        raise ConfigError(
            f"init_streams: the checkpoints read inputs normalised as {fused.normalizations}, "
            f"{config.model} as {model.normalizations}: train each stream with its model "
            "(color: fcn32s_vgg16, hha: fcn32s_vgg16_hha)"
        )
    try:
        model.load_state_dict(fused.state_dict())
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"init_streams: the checkpoints do not fit {config.model} ({detail}): train "
            "them with the same backbone, variant and classes"
        ) from None
    print(f"init_streams: fused {', '.join(f'{m} {p}' for m, p in config.init_streams.items())}")


def _median_weights(config: TrainConfig, data: _Data, spec: ModelSpec) -> list[float]:
    """Median-frequency weights from up to ``class_weight_images`` training labels."""
    dataset, task = data.train, spec.task_names[0]
    count = min(len(dataset), config.class_weight_images)
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    labels = (model_targets(_raw_sample(dataset, i)[1], spec)[task] for i in picks)
    return median_frequency_weights(labels, spec.tasks[0].classes)


def _steps_per_epoch(config: TrainConfig, shard_size: int) -> int:
    micro = shard_size // config.batch_size if config.batch_size > 1 else shard_size
    steps = micro // config.accumulate
    if steps < 1:
        raise ConfigError(
            f"{shard_size} training images per process cannot fill one step of batch_size "
            f"{config.batch_size} x accumulate {config.accumulate}: lower them"
        )
    return steps


# ---------------------------------------------------------------------------------------------
# The loop


def _loop(run: _Run, progress: _Progress) -> str:
    """Epochs until ``total_iters``, evaluating and saving as configured; the stop reason.

    A run stopped early (time limit, callback) is evaluated and saved at the step where it
    stopped, and is not marked finished: resuming it trains on to ``total_iters``."""
    position = progress.position
    run.feedback.open(position.iteration)
    try:
        return _epochs(run, progress)
    finally:
        run.feedback.close()


def _epochs(run: _Run, progress: _Progress) -> str:
    position = progress.position
    while position.iteration < _total(run, position):
        stop = train_one_epoch(run, progress)
        if stop == "interrupted":
            if position.iteration < _total(run, position):
                _save(run, progress, finished=False)  # no validation: the user is waiting
                return stop
            stop = None  # that was the last step: finish as usual
        epoch_done = position.step_in_epoch >= run.steps_per_epoch
        if epoch_done:
            progress.epoch_done()
            if stop is None and _time_up(run):
                stop = "time limit"  # no new epoch
        complete = position.iteration >= _total(run, position)
        if complete:  # a stop asked at the last step: the schedule ran out all the same
            stop = None
        due = epoch_done and position.epoch % run.config.eval_every == 0
        if complete or stop is not None or due:
            _validate(run, progress)
        _save(run, progress, finished=complete)
        if stop is None and not complete and _time_up(run):  # the evaluation took the rest
            stop = "time limit"
            if not due:
                _validate(run, progress)
                _save(run, progress, finished=False)
        if stop is not None:
            return stop
    return "finished"


def train_one_epoch(run: _Run, progress: _Progress) -> str | None:
    """Optimizer steps to the end of the epoch (or the last iteration); a stop reason or
    None. A checkpoint is written every ``checkpoint_every`` steps."""
    config, position = run.config, progress.position
    batches = _epoch_batches(run, position)
    run.model.train()
    window = _Window()
    while position.step_in_epoch < run.steps_per_epoch and position.iteration < _total(
        run, position
    ):
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]  # this step's (the schedule then moves)
        micro = [next(batches) for _ in range(config.accumulate)]
        loss, images = _train_step(run, position, micro)
        progress.step_done()
        if run.average is not None:
            run.average.update(run.net, position.iteration)
        info = StepInfo(
            iteration=position.iteration,
            epoch=position.epoch,
            loss=loss,
            lr=lr,
            images=images * run.context.world_size,
            seconds=time.perf_counter() - started,
        )
        window.add(info)
        run.feedback.step(position.iteration, position.epoch, loss, lr, window.rate())
        if position.iteration % config.log_every == 0:
            _log_train(run, position, window, lr)
        if _checkpoint_due(run, position):
            _save(run, progress, finished=False)
        if run.budget is not None:
            _follow_budget(run, progress, info)
        stop = _should_stop(run, info)
        if stop is not None:
            return stop
    return None


def _epoch_batches(run: _Run, position: _Position) -> Iterator[tuple[Any, Any]]:
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
    base = _base(dataset)
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch)  # seeded augmentation varies by epoch


def _train_step(run: _Run, position: _Position, micro: list[tuple[Any, Any]]) -> tuple[float, int]:
    """One optimizer step over ``accumulate`` micro-batches; (mean loss, images on this rank).

    Gradients average over micro-batches and (through DDP) ranks, as Caffe's iter_size does.
    """
    device, spec = run.context.device, run.spec
    run.optimizer.zero_grad(set_to_none=True)
    total, images = 0.0, 0
    for index, (image, label) in enumerate(micro):
        inputs = to_device(model_inputs(image, spec), device)
        targets = to_device(model_targets(label, spec), device)
        last = index == len(micro) - 1
        with _no_sync(run.model, skip=not last):  # DDP all-reduces on the last only
            with autocast(device, run.amp):
                loss = run.criterion(run.model(inputs, by_task=True), targets)
            value = loss.item()
            if all_reduce_max(0.0 if math.isfinite(value) else 1.0, run.context) > 0:
                _diverged(run, position, f"loss is {value}")  # before backward: weights good
            run.scaler.scale(loss / len(micro)).backward()
        total += value
        images += batch_size(inputs)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return total / len(micro), images


def _no_sync(model: nn.Module, *, skip: bool):
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _checkpoint_due(run: _Run, position: _Position) -> bool:
    """Every ``checkpoint_every`` steps, except at the epoch's end (which saves anyway)."""
    every = run.config.checkpoint_every
    mid_epoch = position.step_in_epoch < run.steps_per_epoch
    return bool(every) and position.iteration % every == 0 and mid_epoch


def _should_stop(run: _Run, info: StepInfo) -> str | None:
    """ "time limit", "callback", "interrupted" or None, the same on every rank."""
    reason = 1.0 if _time_up(run, reduce=False) else 0.0
    if any(callback(info) for callback in run.callbacks):
        reason = max(reason, 2.0)
    if run.interrupt.requested:
        reason = 3.0
    reason = all_reduce_max(reason, run.context)  # every rank stops at the same step
    return {0.0: None, 1.0: "time limit", 2.0: "callback", 3.0: "interrupted"}[reason]


def _time_up(run: _Run, *, reduce: bool = True) -> bool:
    """Past ``time_limit_minutes``, or so near the time budget's end that only the closing
    validation and checkpoint still fit."""
    since_start = time.monotonic() - run.started
    limit = run.config.time_limit_minutes
    up = bool(limit) and since_start > limit * 60
    if run.budget is not None:
        up = up or run.budget.up(since_start)
    return all_reduce_max(float(up), run.context) > 0 if reduce else up


def _total(run: _Run, position: _Position) -> int:
    """The optimizer steps this run takes: as configured, or as a time budget planned."""
    return position.planned_iters or run.total_iters


def _follow_budget(run: _Run, progress: _Progress, info: StepInfo) -> None:
    """Plan the run's length after timing the probe steps (a resumed run: after timing them
    again), then again every ``REPLAN_EVERY`` steps at the pace the run keeps."""
    budget, position = run.budget, progress.position
    assert budget is not None
    if budget.costs is None:
        budget.observe(info.seconds)
        if budget.probe_done():
            _plan(run, progress, _probe_costs(run, progress))
    elif position.iteration % REPLAN_EVERY == 0:
        spent = budget.spent(time.monotonic() - run.started)
        pace = budget.pace(position.iteration, spent)
        if pace is not None:
            _plan(run, progress, dataclasses.replace(budget.costs, step=pace))


def _probe_costs(run: _Run, progress: _Progress) -> Costs:
    """A step (the probe's median), a validation (its first images) and a checkpoint."""
    validation = _validation_cost(run)
    began = time.perf_counter()
    _save(run, progress, finished=False)  # timed, and a checkpoint to resume from
    save = time.perf_counter() - began
    run.model.train()
    assert run.budget is not None
    return Costs(step=run.budget.step_cost(), validation=validation, save=save)


def _plan(run: _Run, progress: _Progress, costs: Costs) -> None:
    """Size the run to end inside the budget at ``costs``; the schedule follows a new plan."""
    budget, position = run.budget, progress.position
    assert budget is not None
    budget.costs = costs
    spent = budget.spent(time.monotonic() - run.started)
    budget.planned(position.iteration, spent)
    planned = plan_steps(
        budget.seconds,
        spent,
        position.iteration,
        costs,
        steps_per_epoch=run.steps_per_epoch,
        eval_every=run.config.eval_every,
        checkpoint_every=run.config.checkpoint_every,
        upper=run.total_iters,
    )
    planned = int(all_reduce_max(float(planned), run.context))  # every rank the same
    first = not position.planned_iters
    if not first and not moved(position.planned_iters, planned):
        return
    position.planned_iters = planned
    _stretch_schedule(run.scheduler, planned)
    run.feedback.retotal(planned)
    _announce_plan(run, position, costs, first=first)


def _validation_cost(run: _Run, images: int = 4) -> float:
    """Seconds of one validation pass, from timing its first few images (after one
    untimed image: the first allocates)."""
    val = run.data.val
    count = min(images, len(val))
    _evaluate(run, Subset(val, range(1)), progress=False)
    began = time.perf_counter()
    _evaluate(run, Subset(val, range(count)), progress=False)
    per_image = (time.perf_counter() - began) / count
    return per_image * math.ceil(len(val) / run.context.world_size)


def _announce_plan(run: _Run, position: _Position, costs: Costs, *, first: bool) -> None:
    planned = position.planned_iters
    run.log.write(
        {
            "event": "plan",
            "iteration": position.iteration,
            "planned_iters": planned,
            "step_s": costs.step,
            "validation_s": costs.validation,
            "save_s": costs.save,
        }
    )
    assert run.budget is not None
    capped = " (capped by epochs / max_iters)" if planned == run.total_iters else ""
    when = "" if first else f" at step {position.iteration}, planned again"
    run.feedback.write(
        f"time budget {minutes(run.budget.seconds)}{when}: a step takes {costs.step:.2f} s, a "
        f"validation {minutes(costs.validation)}, a checkpoint {costs.save:.1f} s; planned "
        f"{planned} steps ({planned / run.steps_per_epoch:.1f} epochs){capped}"
    )


class _Window:
    """Losses, images and seconds since the last log line."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.images = 0
        self.seconds = 0.0

    def add(self, info: StepInfo) -> None:
        self.losses.append(info.loss)
        self.images += info.images
        self.seconds += info.seconds

    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def reset(self) -> None:
        self.__init__()


def _log_train(run: _Run, position: _Position, window: _Window, lr: float) -> None:
    loss = all_mean(sum(window.losses) / max(len(window.losses), 1), run.context)
    run.log.write(
        {
            "event": "train",
            "epoch": position.epoch,
            "iteration": position.iteration,
            "loss": loss,
            "lr": lr,
            "images_per_s": window.rate(),
            "threads": torch.get_num_threads(),
            "time": round(time.monotonic() - run.started, 3),
        }
    )
    window.reset()


def _diverged(run: _Run, position: _Position, what: str) -> None:
    """Stop with a message saying what went wrong and which checkpoint is kept."""
    last = run.run_dir / "last.pt"
    kept = (
        f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
    )
    message = (
        f"{what} after iteration {position.iteration} (epoch {position.epoch + 1}): training "
        f"stopped and {kept}. Lower lr (now {run.config.lr:g}), use loss_reduction = mean, "
        "or turn amp off"
    )
    run.log.write({"event": "stopped", "reason": what, "iteration": position.iteration})
    raise NonFiniteLossError(message)


# ---------------------------------------------------------------------------------------------
# Validation and checkpoints


def _validate(run: _Run, progress: _Progress) -> None:
    """Evaluate on the validation set (every rank its shard) and log the summed metrics."""
    context = run.context
    began = time.perf_counter()
    with _averaged(run):
        confusion = _evaluate(run, run.data.val, progress=context.is_main and sys.stdout.isatty())
    if run.budget is not None:
        run.budget.validated(time.perf_counter() - began)
    metrics = task_metrics(confusion)
    tasks = run.spec.task_names
    if len(tasks) == 1:
        metrics = summary = metrics[tasks[0]]
        text = format_metrics(summary)
    else:  # the first task's four numbers on top, for the curves and the best checkpoint
        summary = {**{key: metrics[tasks[0]][key] for key in METRIC_NAMES}, **metrics}
        text = "; ".join(f"{task}: {format_metrics(metrics[task])}" for task in tasks)
    matrices = {task: matrix.reduced() for task, matrix in confusion.matrices.items()}
    progress.validated(metrics, matrices, summary["mean_iu"])
    position = progress.position
    run.log.write(
        {"event": "val", "epoch": position.epoch, "iteration": position.iteration, **summary}
    )
    run.feedback.write(f"iteration {position.iteration}: {text}")


def _averaged(run: _Run) -> contextlib.AbstractContextManager:
    """The model holds the averaged weights inside (ema_decay), its own without averaging."""
    return run.average.applied(run.net) if run.average is not None else contextlib.nullcontext()


def _validate_trained(run: _Run, progress: _Progress) -> None:
    """Averaging on: the trained weights validated once at the end, beside the average, so
    the run shows what averaging gained (log.jsonl "trained", metrics.json)."""
    confusion = _evaluate(run, run.data.val, progress=False)
    task = run.spec.task_names[0]
    progress.trained = task_metrics(confusion)[task]
    iteration = progress.position.iteration
    run.log.write({"event": "trained", "iteration": iteration, **progress.trained})
    averaged = progress.metrics.get("mean_iu", float("nan"))
    run.feedback.write(
        f"iteration {iteration}: weight average mean IU {100 * averaged:.1f}; the trained "
        f"weights without it: {format_metrics(progress.trained)}"
    )


def _evaluate(run: _Run, dataset: Dataset, *, progress: bool):
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


def _save(run: _Run, progress: _Progress, *, finished: bool) -> None:
    """last.pt always (every rank's generator states gathered into it); best.pt when the
    latest validation beat the best so far."""
    if all_reduce_max(0.0 if _finite_weights(run.net) else 1.0, run.context) > 0:
        _diverged(run, progress.position, "weights became NaN or infinite")  # keep last.pt
    progress.position.finished = finished
    if run.budget is not None:
        progress.position.seconds = run.budget.spent(time.monotonic() - run.started)
    rng: Any = ckpt.rng_state()
    if run.context.distributed:
        import torch.distributed as dist

        states: list[Any] = [None] * run.context.world_size
        dist.all_gather_object(states, rng)
        rng = states
    began = time.perf_counter()
    if run.context.is_main:
        if progress.new_best:
            ckpt.save_checkpoint(_checkpoint(run, progress), run.run_dir / "best.pt")
            progress.new_best = False
        ckpt.save_checkpoint(_checkpoint(run, progress, rng=rng), run.run_dir / "last.pt")
    if run.budget is not None:
        run.budget.saved(time.perf_counter() - began)


def _finite_weights(model: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()
    )


def _checkpoint(run: _Run, progress: _Progress, *, rng: Any = None) -> ckpt.ModelRecord:
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
        if run.average is not None:  # the weights to train on from
            trained = run.net.state_dict()
            training["trained_state"] = {k: v.detach().cpu() for k, v in trained.items()}
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
    if run.average is None:
        return record
    averaged = {k: v.detach().cpu() for k, v in run.average.state.items()}
    return dataclasses.replace(record, state_dict=averaged)  # validated, kept and deployed


def _restore(run: _Run, checkpoint: ckpt.ModelRecord) -> _Progress:
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
    trained = training.get("trained_state")  # averaging on: the weights are the average
    load_state(run.model, trained if trained is not None else checkpoint.state_dict, where=path)
    if run.average is not None:  # averaging switched on at resume: it starts here
        run.average.load(checkpoint.state_dict if trained is not None else run.net.state_dict())
    saved = {f.name for f in dataclasses.fields(_Position)}
    position = _Position(**{k: v for k, v in training.items() if k in saved})
    if run.budget is not None:
        run.budget.spent_before = position.seconds
    run.optimizer.load_state_dict(training["optimizer"])
    run.scheduler.load_state_dict(training["scheduler"])
    _stretch_schedule(run.scheduler, _total(run, position))
    if position.planned_iters:  # a time budget planned the run's length
        run.feedback.retotal(position.planned_iters)
    run.scaler.load_state_dict(training["scaler"])
    run.log.truncate_after(position.iteration)
    states = training["rng"]  # a list under DDP: one per rank; last, as they are left
    rank = run.context.rank
    ckpt.set_rng_state(states[rank % len(states)] if isinstance(states, list) else states)
    return _Progress(position, checkpoint.metrics or {}, checkpoint.confusion)


# ---------------------------------------------------------------------------------------------
# Output


def _stretch_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, total: int) -> None:
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


def _announce(run: _Run, progress: _Progress, *, resumed: bool, extended: bool = False) -> None:
    """What the run will do, before it does it: the notes of what it chose (splits, warm-up),
    then data, steps and epochs, schedule, where the weights start, and the run folder."""
    config, position = run.config, progress.position
    for note in run.notes:
        print(note)
    verb = f"resuming at iteration {position.iteration}" if resumed else "training"
    if extended:
        verb = f"training on from iteration {position.iteration} (the run had finished)"
    total = _total(run, position)
    epochs = math.ceil(total / run.steps_per_epoch)
    steps = f"{total} steps = {epochs} epoch(s)"
    if run.budget is not None and not position.planned_iters:
        steps = (
            f"steps planned after {PROBE_STEPS} to fit the time budget of "
            f"{minutes(run.budget.seconds)} (at most {total} = {epochs} epoch(s))"
        )
    print(
        f"{verb} {config.model} ({config.recipe} recipe) on {config.dataset}: "
        f"{len(run.data.train)} train / {len(run.data.val)} val images{_val_source(config)}\n"
        f"  {steps} of {run.steps_per_epoch} steps, "
        f"{config.batch_size * config.accumulate} x {run.context.world_size} images a step; "
        f"{config.optimizer} lr {config.lr:g}, {config.schedule} schedule, warm-up "
        f"{config.warmup_iters or 0} steps\n"
        f"  weights: {_weights_source(config)}{_average_note(config)}\n"
        f"  run folder {run.run_dir}",
        flush=True,
    )
    run.log.write(
        {
            "event": "resume" if resumed else "start",
            "iteration": position.iteration,
            "world_size": run.context.world_size,
            "device": str(run.context.device),
        }
    )


def _average_note(config: TrainConfig) -> str:
    if not config.ema_decay:
        return ""
    span = round(1 / (1 - config.ema_decay))
    return (
        f"; validated and saved as their moving average (ema_decay {config.ema_decay:g}, "
        f"about {span} steps)"
    )


def _val_source(config: TrainConfig) -> str:
    if config.val_split == RANDOM_SPLIT:
        return f" (a random {config.val_fraction:.0%} held out, split_seed {config.split_seed})"
    same = config.val_dataset in (None, config.dataset) and config.val_root == config.root
    if same and config.val_split == config.train_split:
        return " (the training images: val measures fit, not generalisation)"
    return ""


def _weights_source(config: TrainConfig) -> str:
    """Where the weights start, in words."""
    if config.init_from:
        return f"from {config.init_from}"
    if config.init_streams:
        return "fused from " + ", ".join(config.init_streams.values())
    if config.model_options.get("pretrained_backbone"):
        return "ImageNet-pretrained backbone (pretrained_backbone = true)"
    return "random, trained from scratch (pretrained_backbone = true starts from ImageNet)"


def _report(run: _Run, progress: _Progress) -> None:
    """metrics.json, curves, the confusion matrix and (one RGB input, one task) overlays."""
    spec, position = run.spec, progress.position
    simple = len(spec.inputs) == 1 and len(spec.tasks) == 1
    write_report(
        run.run_dir,
        run.log,
        classes=run.data.classes[spec.task_names[0]],
        val_set=run.data.val,
        summary={
            "iterations": position.iteration,
            "best_iteration": position.best_iteration,
            "last": progress.metrics,
            **({"trained": progress.trained} if progress.trained else {}),
        },
        overlays=run.config.overlays if simple else 0,
        device=run.context.device,
    )


def _by_task_or_one(classes: dict[str, tuple[str, ...]]) -> Any:
    """One label set's names as they are, several as a dict by task (the log's columns)."""
    return next(iter(classes.values())) if len(classes) == 1 else classes
