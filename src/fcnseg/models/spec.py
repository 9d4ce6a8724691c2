"""``ModelSpec``: every build option of a model, written once.

A spec is the constructor's argument and the checkpoint's record at once: ``build_model``
turns a spec into a model, every model carries the (resolved) spec it was built from as
``model.spec``, and checkpoints, weights files and ONNX metadata store ``spec.to_dict()``,
from which ``ModelSpec.from_dict`` and ``build_model`` rebuild the model with nothing else.
Adding a build option means adding one field here.

A model reads named inputs (``inputs``: an RGB image, or NYUDv2's colour, depth and HHA)
and predicts named tasks (``tasks``: one label set, or SIFT Flow's semantic and geometric
classes). Several inputs meet by early fusion (stacked into one backbone whose first
convolution is widened) or late fusion (one backbone per input, scores summed with
``fusion_weights``, Section 5 and Table 4 of the paper).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backbones import BACKBONES, GEOMETRIES
from .normalization import InputNormalization, from_record, to_record

__all__ = [
    "InputSpec",
    "TaskSpec",
    "ModelSpec",
    "SpecError",
    "DEFAULT_INPUT",
    "DEFAULT_TASK",
    "VARIANTS",
]

DEFAULT_INPUT = "image"
DEFAULT_TASK = "semantic"
# How many taps below the last each net fuses, coarse to fine (the paper's "skips").
VARIANTS = {"32s": 0, "16s": 1, "8s": 2}
FUSIONS = ("early", "late")
UPSAMPLES = ("deconv", "bilinear")
OUTPUT_STRIDES = (8, 16, 32)


class SpecError(ValueError):
    """A spec names an option that does not exist or a value it cannot take."""


@dataclass(frozen=True)
class InputSpec:
    """One input: its name, channel count and normalisation (None: that of the backbone's
    weights, filled in when the model is built)."""

    name: str = DEFAULT_INPUT
    channels: int = 3
    normalization: InputNormalization | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One label set the model predicts: its name and class count."""

    name: str = DEFAULT_TASK
    classes: int = 21


@dataclass(frozen=True)
class ModelSpec:
    """Every option of an FCN; ``build_model(spec)`` builds it."""

    backbone: str
    variant: str = "8s"  # 32s, 16s or 8s: the skips fused (Section 4.2)
    tasks: tuple[TaskSpec, ...] = ()
    inputs: tuple[InputSpec, ...] = (InputSpec(),)
    fusion: str = "early"  # several inputs: stacked (early) or one stream each (late)
    fusion_weights: tuple[float, ...] | None = None  # late: per input; None: equal, sum 1
    geometry: str | None = None  # caffe or aligned; None: the backbone's default
    upsample: str = "deconv"  # fixed bilinear deconvolutions, or interpolation
    learnable_upsample: bool = False
    output_stride: int = 32  # 16 or 8 rarefy the last stages (dense.py, Section 3.2)
    skip_scales: tuple[float, ...] | None = None  # FCN-8s at-once: (0.01, 0.0001)
    pretrained_backbone: bool = False  # the ImageNet weights that ship offline
    backbone_weights: str | None = None  # a torchvision/timm state dict file
    name: str | None = None  # the registered name it was made from, for people

    def __post_init__(self) -> None:
        # Plain data (from a file, a config, keywords) becomes its typed form, here only:
        # tasks and inputs as their specs, the float sequences as tuples.
        _set(self, "tasks", tasks_from(self.tasks))
        _set(self, "inputs", inputs_from(self.inputs))
        for key in ("fusion_weights", "skip_scales"):
            if getattr(self, key) is not None:
                _set(self, key, _floats(key, getattr(self, key)))
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("variant", self.variant, VARIANTS)
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("upsample", self.upsample, UPSAMPLES)
        _check_choice("output_stride", self.output_stride, OUTPUT_STRIDES)
        if self.geometry is not None:
            _check_choice("geometry", self.geometry, GEOMETRIES)
        if not self.inputs:
            raise SpecError("a model needs at least one input")
        _check_names("input", [i.name for i in self.inputs])
        _check_names("task", [t.name for t in self.tasks])
        for item in self.inputs:
            if item.channels < 1:
                raise SpecError(f"input {item.name!r} needs at least 1 channel")
        for task in self.tasks:
            if task.classes < 1:
                raise SpecError(f"task {task.name!r} needs at least 1 class, not {task.classes}")
        if self.fusion_weights is not None and len(self.fusion_weights) != len(self.inputs):
            raise SpecError(
                f"fusion_weights has {len(self.fusion_weights)} values for "
                f"{len(self.inputs)} inputs: give one per input"
            )
        if self.fusion == "late" and len(self.inputs) < 2:
            raise SpecError("late fusion needs two inputs or more")
        if self.skip_scales is not None and len(self.skip_scales) < VARIANTS[self.variant]:
            raise SpecError(f"skip_scales needs one factor per skip of FCN-{self.variant}")

    # -- what callers read

    @property
    def num_classes(self) -> int:
        """The class count of a single-task model."""
        if len(self.tasks) != 1:
            raise SpecError(
                f"{self.label} predicts {len(self.tasks)} tasks ({', '.join(self.task_names)}): "
                "ask spec.task_classes"
            )
        return self.tasks[0].classes

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    @property
    def task_classes(self) -> dict[str, int]:
        return {task.name: task.classes for task in self.tasks}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.inputs)

    @property
    def input_channels(self) -> dict[str, int]:
        return {item.name: item.channels for item in self.inputs}

    @property
    def in_channels(self) -> int:
        """Channels of all inputs stacked (what the first convolution of an early-fusion
        net reads)."""
        return sum(item.channels for item in self.inputs)

    @property
    def label(self) -> str:
        return self.name or f"fcn{self.variant}_{self.backbone}"

    def architecture(self) -> ModelSpec:
        """This spec without what only starts the weights (pretrained_backbone,
        backbone_weights): what a checkpoint needs to rebuild its model."""
        return dataclasses.replace(self, pretrained_backbone=False, backbone_weights=None)

    def same_architecture(self, other: ModelSpec) -> bool:
        """Whether the two build models whose weights fit each other."""
        mine, theirs = self.architecture(), other.architecture()
        return dataclasses.replace(mine, name=None, inputs=_bare(mine.inputs)) == (
            dataclasses.replace(theirs, name=None, inputs=_bare(theirs.inputs))
        )

    # -- plain data

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; ``ModelSpec.from_dict`` reads it back."""
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "tasks":
                value = {task.name: task.classes for task in value}
            elif item.name == "inputs":
                value = {i.name: _input_record(i) for i in value}
            elif isinstance(value, tuple):
                value = list(value)
            data[item.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec ``to_dict`` wrote; unknown keys are refused, missing ones default."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a model spec is a mapping, not {type(data).__name__}")
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"unknown model option(s) {', '.join(unknown)}; the options are "
                f"{', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except (TypeError, AttributeError) as error:
            raise SpecError(f"malformed model spec ({error})") from None


def tasks_from(value: Any) -> tuple[TaskSpec, ...]:
    """Tasks from ``{name: classes}``, TaskSpecs, or a class count (one default task)."""
    if isinstance(value, bool):
        raise SpecError(f"tasks must be {{name: classes}}, not {value!r}")
    if isinstance(value, int):
        return (TaskSpec(DEFAULT_TASK, value),)
    if isinstance(value, Mapping):
        return tuple(
            n if isinstance(n, TaskSpec) else TaskSpec(str(name), _count(name, n))
            for name, n in value.items()
        )
    tasks = tuple(value)
    for task in tasks:
        if not isinstance(task, TaskSpec):
            raise SpecError(f"tasks must be {{name: classes}} or TaskSpecs, not {value!r}")
    return tasks


def inputs_from(value: Any) -> tuple[InputSpec, ...]:
    """Inputs from ``{name: channels}``, ``{name: {"channels", "normalization"}}`` or
    InputSpecs."""
    if not isinstance(value, Mapping):
        inputs = tuple(value)
        for item in inputs:
            if not isinstance(item, InputSpec):
                raise SpecError(f"inputs must be {{name: channels}} or InputSpecs, not {value!r}")
        return inputs
    inputs = []
    for name, item in value.items():
        if isinstance(item, InputSpec):
            inputs.append(item)
        elif isinstance(item, Mapping):
            norm = item.get("normalization")
            norm = from_record(norm) if isinstance(norm, Mapping) else norm
            inputs.append(InputSpec(str(name), _count(name, item.get("channels", 3)), norm))
        else:
            inputs.append(InputSpec(str(name), _count(name, item)))
    return tuple(inputs)


def _count(name: Any, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name}: expected a whole number, got {value!r}")
    return value


def _floats(key: str, values: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SpecError(f"{key} must be a sequence of numbers, not {values!r}") from None


def _set(spec: ModelSpec, key: str, value: Any) -> None:
    object.__setattr__(spec, key, value)  # the dataclass is frozen once built


def _input_record(item: InputSpec) -> dict[str, Any]:
    norm = item.normalization
    return {"channels": item.channels, "normalization": None if norm is None else to_record(norm)}


def _bare(inputs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
    return tuple(dataclasses.replace(i, normalization=None) for i in inputs)


def _check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise SpecError(
            f"{key} = {value!r} is not allowed: choose one of {', '.join(map(str, allowed))}"
        )


def _check_names(what: str, names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise SpecError(f"{what} name {name!r} must be a Python identifier")
    if len(set(names)) != len(names):
        raise SpecError(f"{what} names {names} repeat a name")


# The option names, for builders that take them by keyword.
SPEC_FIELDS = tuple(item.name for item in dataclasses.fields(ModelSpec))
