"""Inference engines: the same model run by PyTorch, ONNX Runtime or OpenVINO.

    segmenter = Segmenter.from_checkpoint("best.pt", engine="auto")

``torch`` runs the checkpoint's model itself (``fcnseg.speed``). ``onnxruntime`` and
``openvino`` run its ONNX export: exported once per checkpoint *contents* into
``.fcnseg-cache/`` beside the checkpoint (``$XDG_CACHE_HOME/fcnseg/onnx`` when that folder
cannot be written), named by the checkpoint's sha256, written atomically, with dynamic
batch, height and width. A changed checkpoint has another digest, so it is exported anew;
each cached file also records the digest it came from and is exported again when that
does not match. Every model of the library runs on every engine: the export has one input
per model input and one output per task, so multi-input, multi-task and tiled prediction
work the same way on each. One Segmenter may be called from many threads on every engine
(OpenVINO gives each concurrent call its own infer request).

``auto`` picks by what benchmarks/engines.py measured (docs/BENCHMARKS.md, "Engines"):
OpenVINO was the fastest fp32 engine for FCN-8s VGG16 (500 x 500) and EfficientNet-Lite0
(360 x 480) at 1 thread in every run, and at 2 threads in all four runs on the idle 2-core
AMD EPYC (1.04-1.52x torch eager), where an earlier rule kept torch for Lite0 (0.80-0.96 of
the fastest). So: a GPU gets ``torch``; otherwise ``openvino`` when installed, else
``onnxruntime``, else ``torch``.

OpenVINO runs in fp32 (``INFERENCE_PRECISION_HINT f32``): on a CPU with bf16 arithmetic it
would otherwise choose bf16, whose scores differ from the other engines' by far more than
rounding. An int8 (QDQ) file from ``fcnseg quantize`` runs on either ONNX engine.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import queue
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .export import (
    LABELS,
    RECORD_KEY,
    OnnxRuntimeRunner,
    check_weights,
    export_onnx,
    read_onnx_record,
)
from .fileio import file_digest
from .modelfile import ModelRecord, read_record
from .models import ModelSpec

__all__ = [
    "ENGINES",
    "EngineError",
    "EngineModule",
    "cached_onnx",
    "choose_engine",
    "installed",
    "onnx_module",
    "onnx_runner",
]

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_ENGINES = ("openvino", "onnxruntime")  # auto's order of preference
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
CACHE_FOLDER = ".fcnseg-cache"
SOURCE_KEY = "source_sha256"  # in the exported record: the checkpoint it came from


class EngineError(ValueError):
    """An engine that cannot run: unknown, not installed, or given a file it cannot use."""


@functools.cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # absent, or broken (a missing shared library)
        return False
    return True


def installed(engine: str) -> bool:
    """Whether ``engine`` can run here (the ONNX engines also need the exporter)."""
    if engine == "torch":
        return True
    return all(_importable(name) for name in (engine, "onnx", "onnxscript"))


def require(engine: str) -> str:
    """``engine`` if it is known and installed; else one line saying what to do."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine in _PACKAGES and not installed(engine):
        package, extra = _PACKAGES[engine]
        raise EngineError(
            f"engine {engine!r} is not installed: pip install 'fcnseg[{extra}]' (the {package} "
            "package and the ONNX exporter)"
        )
    return engine


def choose_engine(engine: str, spec: ModelSpec | None, device: str = "cpu") -> str:
    """The engine to run: ``engine`` itself, or what ``auto`` picks (module docstring).

    ``spec`` None is an ONNX file: only the ONNX engines run it."""
    require(engine)
    if engine != "auto":
        return engine
    if spec is not None and torch.device(device).type != "cpu":
        return "torch"
    for name in ONNX_ENGINES:
        if installed(name):
            return name
    if spec is None:
        raise EngineError("an .onnx file needs onnxruntime or openvino: pip install 'fcnseg[onnx]'")
    return "torch"


# ---------------------------------------------------------------------------------------------
# The export cache


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fcnseg-probe-"):
            pass
    except OSError:
        return False
    return True


def user_cache() -> Path:
    """Where exports go when the checkpoint's folder cannot be written."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fcnseg" / "onnx"


def _metadata(path: Path | str) -> dict[str, str]:
    """An ONNX file's metadata_props, once its weights match the digest it records."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError on bytes that are not a model, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EngineError(
            f"{path} is not a readable ONNX file ({first}): export it again "
            "(fcnseg export onnx, or fcnseg quantize)"
        ) from None
    check_weights(model, path)
    return {prop.key: prop.value for prop in model.metadata_props}


def recorded_source(path: Path) -> str | None:
    """The checkpoint digest an exported file records (None: none, unreadable, or damaged
    weights)."""
    try:
        return json.loads(_metadata(path)[RECORD_KEY]).get(SOURCE_KEY)
    except Exception:  # a half-written or foreign file: export again
        return None


def cached_onnx(checkpoint: Path | str, record: ModelRecord | None = None) -> Path:
    """The ONNX export of ``checkpoint``, made once per checkpoint contents.

    Looked for beside the checkpoint, then in the user cache; exported into the first of
    the two that can be written when missing or made from other contents."""
    checkpoint = Path(checkpoint)
    digest = file_digest(checkpoint)
    name = f"{checkpoint.stem}-{digest[:16]}.onnx"
    folders = [checkpoint.resolve().parent / CACHE_FOLDER, user_cache()]
    for folder in folders:
        if (folder / name).is_file() and recorded_source(folder / name) == digest:
            return folder / name
    target = next((folder for folder in folders if _writable(folder)), None)
    if target is None:
        raise EngineError(
            f"no folder to cache the ONNX export of {checkpoint} in: make "
            f"{folders[0]} or {folders[1]} writable, or use --engine torch"
        )
    record = record or read_record(checkpoint, what="checkpoint")
    export_onnx(
        record.build(),
        target / name,
        classes=record.classes,
        palette=record.palette,
        ignore_index=record.ignore_index,
        source=digest,
    )
    return target / name


def check_source(onnx_file: Path | str, checkpoint: Path | str) -> None:
    """Refuse an ONNX file made from another checkpoint than ``checkpoint``."""
    recorded = recorded_source(Path(onnx_file))
    if recorded is not None and recorded != file_digest(checkpoint):
        raise EngineError(
            f"{onnx_file} was made from another checkpoint than {checkpoint} (sha256 "
            f"{recorded[:12]}...): export or quantize it again from {checkpoint}"
        )


# ---------------------------------------------------------------------------------------------
# Runners: normalised numpy batches by input name in, float32 scores by task out


# Input shapes OpenVINO keeps a model compiled for (least recently used dropped first)
STATIC_SHAPES = 4


class OpenVinoRunner:
    """An ONNX file compiled by OpenVINO for the CPU, in fp32, safe to call from many threads.

    An infer request holds one call's inputs and outputs, so two threads on one request
    read each other's results: each call takes an idle request from a pool (a new one when
    all are busy) and gives it back when done. The compiled model is shared.

    The model is compiled for any input size; an image size seen a second time gets a
    model compiled for its shape (0.1-0.3 s for Lite0), which ran 4-11% faster than the
    dynamic one on CamVid and VOC-sized frames; the last ``STATIC_SHAPES`` shapes are kept.
    Batches of several images run on the dynamic model (a server's batches vary in size:
    compiling for each thrashed)."""

    def __init__(self, path: Path | str, spec: ModelSpec, threads: int | None = None) -> None:
        import openvino

        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.path, self.spec, self.has_labels = Path(path), spec, True
        try:
            self.core = openvino.Core()
            self.model = _with_label_outputs(self.core.read_model(str(path)), spec)
            self.dynamic = _Compiled(self.core.compile_model(self.model, "CPU", self.config))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            raise EngineError(
                f"{path}: OpenVINO cannot compile it ({_first_line(error)})"
            ) from None
        self.static: OrderedDict[tuple, _Compiled] = OrderedDict()
        self.seen: Counter[tuple] = Counter()
        self.lock = threading.Lock()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The float32 scores by task."""
        return self._run(inputs, "")

    def labels(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The N x H x W class of each pixel by task, from the arg-max inside the graph: no
        scores are copied out of OpenVINO."""
        return self._run(inputs, LABELS)

    def _run(self, inputs: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
        feed = {
            name: np.ascontiguousarray(inputs[name], np.float32) for name in self.spec.input_names
        }
        with self._compiled_for(feed).request() as request:
            results = request.infer(feed, share_outputs=True)
            by_name = {output.get_any_name(): value for output, value in results.items()}
            # copied before the request goes back to the pool (another call reuses it)
            return {task: np.array(by_name[prefix + task]) for task in self.spec.task_names}

    def _compiled_for(self, feed: Mapping[str, np.ndarray]) -> _Compiled:
        """The model compiled for these input shapes when they came before, else the one
        for any size."""
        shape = tuple(tuple(array.shape) for array in feed.values())
        if shape[0][0] != 1:  # batches come in every size: one model for them all
            return self.dynamic
        with self.lock:
            if shape in self.static:
                self.static.move_to_end(shape)
                return self.static[shape]
            if len(self.seen) > 1024:  # a stream of ever new sizes: forget them
                self.seen.clear()
            self.seen[shape] += 1
            if self.seen[shape] < 2:
                return self.dynamic
            model = self.model.clone()
            model.reshape({name: list(size) for name, size in zip(feed, shape, strict=True)})
            try:
                compiled = _Compiled(self.core.compile_model(model, "CPU", self.config))
            except Exception as error:  # OpenVINO's own RuntimeErrors
                raise EngineError(f"{self.path}: OpenVINO cannot compile it for {shape} ({_first_line(error)})") from None  # fmt: skip
            self.static[shape] = compiled
            if len(self.static) > STATIC_SHAPES:
                self.static.popitem(last=False)
            return compiled


class _Compiled:
    """A compiled OpenVINO model and a pool of its idle infer requests."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.idle: queue.SimpleQueue = queue.SimpleQueue()

    @contextmanager
    def request(self) -> Iterator[Any]:
        """An infer request no other call is using, back in the pool afterwards."""
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            yield request
        finally:
            self.idle.put(request)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _with_label_outputs(model, spec: ModelSpec):
    """The OpenVINO model with each task's arg-max over the classes as an extra output
    ``labels:<task>`` (uint8 when the classes fit), as ``export.with_label_outputs`` adds
    to an ONNX graph."""
    from openvino import opset13 as ops

    for task, result in zip(spec.task_names, list(model.get_results()), strict=True):
        scores = result.input_value(0)  # what the scores' Result node takes
        best = ops.topk(scores, 1, 1, "max", "none", index_element_type="i64").output(1)
        labels = ops.squeeze(best, ops.constant(np.array([1], dtype=np.int64)))
        kind = "u8" if spec.task_classes[task] <= 256 else "i64"
        labels = ops.convert(labels, kind).output(0)
        labels.get_tensor().set_names({LABELS + task})
        model.add_outputs([labels])
    return model


def file_record(path: Path | str) -> dict[str, Any]:
    """The spec, classes and palette an fcnseg ONNX file records (read without running it)."""
    return read_onnx_record(_metadata(path), Path(path))


def onnx_runner(engine: str, path: Path | str, spec: ModelSpec, threads: int | None = None):
    """A runner of the ONNX file on ``engine`` (onnxruntime or openvino)."""
    if engine == "openvino":
        return OpenVinoRunner(path, spec, threads)
    if engine == "onnxruntime":
        return OnnxRuntimeRunner(path, threads=threads, labels=True)
    raise EngineError(f"engine {engine!r} does not run ONNX files: use onnxruntime or openvino")


def onnx_module(
    engine: str, path: Path | str, spec: ModelSpec, threads: int | None = None
) -> EngineModule:
    """The ONNX file run on ``engine`` behind the model interface (scores by task)."""
    return EngineModule(onnx_runner(engine, path, spec, threads), spec, engine)


class EngineModule(nn.Module):
    """A runner as a ``fcnseg.scoring.Scorer``: inputs by name in, scores by task out (torch
    tensors), whatever ``by_task`` says, as an ONNX file has one output per task."""

    def __init__(self, runner, spec: ModelSpec, engine: str) -> None:
        super().__init__()
        self.runner, self.spec, self.engine = runner, spec, engine

    @property
    def has_labels(self) -> bool:
        """Whether the engine computes the label map itself (``labels``)."""
        return bool(getattr(self.runner, "has_labels", False))

    def labels(self, x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The N x H x W label maps by task, arg-max taken inside the engine."""
        outputs = self.runner.labels({name: tensor.detach().cpu().numpy() for name, tensor in x.items()})  # fmt: skip
        return {task: torch.from_numpy(labels) for task, labels in outputs.items()}

    def forward(self, x: Mapping[str, torch.Tensor], *, by_task: bool = True):
        outputs = self.runner({name: tensor.detach().cpu().numpy() for name, tensor in x.items()})
        device = next(iter(x.values())).device  # the caller's labels wait there
        return {task: torch.from_numpy(np.asarray(s)).to(device) for task, s in outputs.items()}
