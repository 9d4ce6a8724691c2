"""What scores images, and the names it scores by: inputs by input name in, scores by
task out, for every model of the library and every way of running one.

The FCN (``model(inputs, by_task=True)``), an ONNX file on its engine
(``fcnseg.engines.EngineModule``) and a Segmenter's scoring (engine, tiles, TTA) are all
``Scorer``s; training, evaluation, export, quantization and prediction call them through
``score`` and never ask how many inputs or tasks a model has. A single tensor exists only
at the public edges (an FCN's default forward, ``Segmenter.predict``), for the user's
convenience. A dataset's sample becomes names here too (``model_inputs``,
``model_targets``), and a confusion by task becomes metrics by task (``task_metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from .metrics import MultiTaskConfusion, siftflow_metrics
from .models import ModelSpec

__all__ = ["Scorer", "score", "model_inputs", "model_targets", "task_metrics"]


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores: called with N x C x H x W inputs by name and ``by_task=True``,
    it gives N x K x H x W scores by task, one entry per task of ``spec`` (one for a
    single-task model too)."""

    spec: ModelSpec

    def __call__(
        self, inputs: Mapping[str, torch.Tensor], *, by_task: bool = ...
    ) -> dict[str, torch.Tensor]: ...


def score(scorer: Scorer, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The scores of ``inputs`` by task: how the library calls every scorer, so that no
    caller handles a single tensor for a single task."""
    return scorer(inputs, by_task=True)


def model_inputs(image: Any, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """A batch's images as the model's inputs by name. A plain tensor is a single-input
    model's input; a dict must name the model's inputs (a dict with one entry serves a
    single-input model whatever its name: NYUDv2's ``color`` for an RGB net)."""
    names = spec.input_names
    if not isinstance(image, Mapping):
        if len(names) != 1:
            raise ValueError(
                f"{spec.label} reads {list(names)}: read those inputs from the dataset "
                "(NYUDv2: modalities = [...] in the reader options)"
            )
        return {names[0]: image}
    if len(names) == 1 and len(image) == 1:
        return {names[0]: next(iter(image.values()))}
    if set(image) != set(names):
        raise ValueError(
            f"the dataset gives inputs {sorted(image)}, {spec.label} reads {list(names)}: read "
            "exactly those (NYUDv2: modalities = [...]), or use a model made for them"
        )
    return {name: image[name] for name in names}


def model_targets(label: Any, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """A batch's labels by task: a plain tensor is a single-task model's."""
    tasks = spec.task_names
    if not isinstance(label, Mapping):
        if len(tasks) != 1:
            raise ValueError(
                f"{spec.label} predicts {list(tasks)}: read every label set "
                "(SIFT Flow: labels = ['semantic', 'geometric'])"
            )
        return {tasks[0]: label}
    if len(tasks) == 1 and len(label) == 1:
        return {tasks[0]: next(iter(label.values()))}
    missing = set(tasks) - set(label)
    if missing:
        raise ValueError(
            f"{spec.label} predicts {list(tasks)}, the dataset gives labels {sorted(label)}: "
            "read every label set (SIFT Flow: labels = ['semantic', 'geometric'])"
        )
    return {task: label[task] for task in tasks}


def task_metrics(confusion: MultiTaskConfusion) -> dict[str, dict[str, Any]]:
    """The four metrics and per-class values of each task. With several tasks the means of
    each run over the classes present in its labels (the SIFT Flow caveat, Table 5)."""
    if len(confusion.matrices) > 1:
        return siftflow_metrics(confusion)
    return {task: matrix.compute() for task, matrix in confusion.matrices.items()}
