"""Setting a run up: data, model, criterion, optimizer and schedule, built into one ``Run``.

``setup`` reads the datasets (``build_data``), resolves the model's spec from the config and
the data's label sets (``model_spec``), builds the model with its starting weights
(``initialize.build_model_for``: pretrained backbone, ``init_from``, ``init_streams``), the loss
(``build_criterion``), the optimizer and schedule, and the hooks of the features the config
turns on; it checks on the way that the data fits the model, before any training.
"""

from __future__ import annotations

import dataclasses
import os
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from ..builder import resolve_spec
from ..config import RANDOM_SPLIT, ConfigError, TrainConfig
from ..data import build_dataset, eval_transforms, train_transforms
from ..losses import MultiTaskLoss, median_frequency_weights
from ..models import ModelSpec
from ..models.spec import SpecError, tasks_from
from ..scoring import model_inputs, model_targets
from .average import WeightAverage, WeightAveraging
from .budget import Budget
from .distributed import Context
from .feedback import Console, Feedback
from .hooks import Callback, Callbacks, Hook
from .initialize import build_model_for
from .interrupt import Interrupt
from .optim import amp_dtype, build_optimizer, build_scheduler, fit_warmup
from .resume import CheckpointEvery
from .runfolder import RunLog, RunLogger
from .splits import fit_folder_splits, hold_out
from .state import Data, Run
from .timer import Timer

__all__ = [
    "use_channels_last",
    "setup",
    "seed_everything",
    "build_data",
    "model_spec",
    "build_criterion",
]


def seed_everything(config: TrainConfig, context: Context) -> None:
    """Threads, deterministic kernels and every global generator as ``config`` says; each
    rank its own seed (ranks differ in dropout and loss-sampling masks)."""
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


def setup(
    config: TrainConfig,
    run_dir: Path,
    context: Context,
    callbacks: Sequence[Callback | Hook] = (),
    *,
    init: bool,
) -> Run:
    """Data, model, criterion, optimizer, schedule and hooks. ``init`` starts the weights as
    configured; else (resuming) the checkpoint will. ``callbacks``: the user's hooks and
    step callbacks."""
    config, notes = fit_folder_splits(config)
    data = build_data(config)
    spec = model_spec(config, data)
    _check_inputs(config, data, spec)
    if context.is_main:
        _warn_oversized_crop(config, data.train)
    model = build_model_for(config, spec, init=init).to(context.device)
    if use_channels_last(config, context):
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
    return Run(
        config=config,
        context=context,
        run_dir=run_dir,
        data=data,
        model=model,
        criterion=build_criterion(config, data, spec).to(context.device),
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
        feedback=Feedback(
            total_iters, steps_per_epoch, every=config.log_every, enabled=context.is_main
        ),
        hooks=_hooks(config, average, callbacks),
        notes=tuple(notes),
    )


def use_channels_last(config: TrainConfig, context: Context) -> bool:
    """``channels_last`` unless ranks talk through gloo (on CPUs): two gloo ranks with
    channels-last weights validated a few pixels apart from one process evaluating the
    saved weights; NCCL ranks on GPUs keep the faster layout."""
    gloo = context.distributed and context.device.type != "cuda"
    return config.channels_last and not gloo


def _hooks(
    config: TrainConfig, average: WeightAverage | None, callbacks: Sequence[Callback | Hook]
) -> tuple[Hook, ...]:
    """The features the config turns on, in the order the loop calls them: the average
    moves before the step is shown, logged and saved; the time budget plans after the
    step's checkpoint; Ctrl-C is asked last."""
    hooks: list[Hook] = [WeightAveraging(average)] if average is not None else []
    hooks += [Console(), RunLogger()]
    if config.checkpoint_every:
        hooks.append(CheckpointEvery(config.checkpoint_every))
    budget = Budget(config.time_budget_minutes * 60) if config.time_budget_minutes else None
    if budget is not None or config.time_limit_minutes:
        hooks.append(Timer(config.time_limit_minutes, budget))
    hooks += [callback for callback in callbacks if isinstance(callback, Hook)]
    plain = [callback for callback in callbacks if not isinstance(callback, Hook)]
    if plain:
        hooks.append(Callbacks(plain))
    hooks.append(Interrupt())
    return tuple(hooks)


def model_spec(config: TrainConfig, data: Data) -> ModelSpec:
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


def _check_inputs(config: TrainConfig, data: Data, spec: ModelSpec) -> None:
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


def build_criterion(config: TrainConfig, data: Data, spec: ModelSpec) -> MultiTaskLoss:
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


def build_data(config: TrainConfig) -> Data:
    """The training and validation sets of ``config`` with their label sets, checked to
    agree; with ``val_split = "random"`` a share of the training images held out."""
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
    return Data(train_set, val_set, classes, palettes, getattr(train_set, "ignore_index", 255))


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


def _median_weights(config: TrainConfig, data: Data, spec: ModelSpec) -> list[float]:
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


def _by_task_or_one(classes: dict[str, tuple[str, ...]]) -> Any:
    """One label set's names as they are, several as a dict by task (the log's columns)."""
    return next(iter(classes.values())) if len(classes) == 1 else classes
