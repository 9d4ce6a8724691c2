"""What the server does for each request, without HTTP: decode the image, run the model
(batched with concurrent requests of the same size), encode the answer.

``Service.segment`` answers ``POST /v1/segment``: the index mask as a palette PNG (the bytes
``fcnseg predict`` writes for the same image), the overlay picture with ``overlay``, or a
JSON object (class names, colours, size, per-class pixel counts, the mask and, with
``overlay``, the overlay as base64 PNG). ``fcnseg.serving.app`` puts it behind HTTP.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..inference import Segmenter, mask_image, png_bytes, prepared_size
from .batcher import Batcher
from .stats import ServerStats
from .uploads import Refused, decode_image

__all__ = ["Service", "Answer", "DEFAULT_MAX_PIXELS", "default_max_batch"]

DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: a 24 MP photo is refused, 4K passes


@dataclass(frozen=True)
class Answer:
    """A segmentation's answer: the body and its media type."""

    body: bytes
    media_type: str


class Service:
    """A ``Segmenter`` shared by every request: one model thread (``Batcher``), the image
    work (decoding, encoding, drawing) on the callers' threads."""

    def __init__(
        self,
        segmenter: Segmenter,
        *,
        name: str,
        max_batch: int | None = None,
        max_wait_ms: float = 5.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if len(segmenter.inputs) != 1:
            raise ValueError(
                f"{name} reads {' + '.join(segmenter.inputs)}: fcnseg serve answers one image "
                "per request; predict multi-input models with fcnseg predict --input NAME=PATH"
            )
        self.segmenter, self.name, self.max_pixels = segmenter, name, max_pixels
        self.stats = ServerStats()
        self.batcher: Batcher = Batcher(
            self._run,
            max_batch=max_batch or default_max_batch(segmenter),
            max_wait=max_wait_ms / 1000,
            on_batch=self.stats.batch,
        )

    def close(self) -> None:
        """Answer what is queued, then stop the model thread."""
        self.batcher.close()

    # -- answers

    def health(self) -> dict[str, Any]:
        segmenter = self.segmenter
        return {
            "status": "ok",
            "model": self.name,
            "architecture": segmenter.spec.name,
            "engine": segmenter.engine,
            "tasks": {task: list(segmenter.task_classes[task]) for task in segmenter.tasks},
            "max_batch": self.batcher.max_batch,
            "max_pixels": self.max_pixels,
        }

    def segment(self, data: bytes, *, task: str | None, overlay: bool, as_json: bool) -> Answer:
        """The answer to one image's bytes (``Refused`` for a request it cannot serve)."""
        task = self._task(task)
        image = decode_image(data, self.max_pixels)
        labels = self.label_map(image, task)
        if as_json:
            return Answer(self._json(image, labels, task, overlay), "application/json")
        if overlay:
            return Answer(self._overlay_png(image, labels, task), "image/png")
        return Answer(self._mask_png(labels, task), "image/png")

    def label_map(self, image: np.ndarray, task: str) -> np.ndarray:
        """``image``'s label map for ``task``, run in a batch with concurrent requests."""
        prepared = self.segmenter.prepared(image)
        future = self.batcher.submit(prepared_size(prepared), prepared)
        return future.result()[task]

    def _run(self, prepared: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
        return [labels for labels, _ in self.segmenter.label_maps_of(prepared)]

    def _task(self, task: str | None) -> str:
        tasks = self.segmenter.tasks
        if task is None:
            return tasks[0]
        if task not in tasks:
            raise Refused(
                400, "unknown_task", f"the model has no task {task!r}: ask for {' or '.join(tasks)}"
            )
        return task

    # -- encodings

    def _mask_png(self, labels: np.ndarray, task: str) -> bytes:
        return png_bytes(mask_image(labels, self.segmenter.task_palettes[task]))

    def _overlay_png(self, image: np.ndarray, labels: np.ndarray, task: str) -> bytes:
        return png_bytes(self.segmenter.overlay(image, labels, task=task))

    def _json(self, image: np.ndarray, labels: np.ndarray, task: str, overlay: bool) -> bytes:
        classes = self.segmenter.task_classes[task]
        palette = self.segmenter.task_palettes[task]
        pixels = np.bincount(labels.ravel().astype(np.int64), minlength=len(classes))
        answer: dict[str, Any] = {
            "model": self.name,
            "task": task,
            "width": int(labels.shape[1]),
            "height": int(labels.shape[0]),
            "classes": list(classes),
            "colors": [list(color[:3]) for color in palette[: len(classes)]],
            "pixels": [int(count) for count in pixels],
            "mask": _base64(self._mask_png(labels, task)),
        }
        if overlay:
            answer["overlay"] = _base64(self._overlay_png(image, labels, task))
        return json.dumps(answer).encode()


def default_max_batch(segmenter: Segmenter) -> int:
    """8 on a GPU; 1 on a CPU, where batches ran slower per image than single images
    (batches of 8 of CamVid frames on 2 cores: OpenVINO 43.4 against 53.0 images/s, torch
    24.3 against 34.3; benchmarks/serve.py)."""
    on_gpu = segmenter.engine == "torch" and segmenter.device.type == "cuda"
    return 8 if on_gpu else 1


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
