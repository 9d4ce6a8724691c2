"""ONNX export with dynamic batch, height and width, and a small onnxruntime runner.

The exported graph has one input per model input (named as ``spec.inputs``: ``image``, or
NYUDv2's ``color`` and ``depth``), each N x C x H x W and already normalised, and one output
per task (named as ``spec.tasks``: ``semantic``, or SIFT Flow's ``semantic`` and
``geometric``), N x classes x H x W logits. The crops and fusions of the FCN head are
computed from the tensor shapes inside the graph, so one file serves every image size.

Exporter: torch's torch.export-based one (``torch.onnx.export(dynamo=True)``, the
default since torch 2.9; it needs the onnxscript package). It traces with symbolic
sizes, so the head's size arithmetic (``min``, ``max``, the replicated borders of the
crops) becomes graph operations. Height and width are ``Dim.DYNAMIC``: with named
``Dim``s torch.export tries to prove every size guard of the caffe-geometry nets
(ceil-mode pooling, pad 100) as a linear constraint and stops on ones it cannot state,
though they hold for every size. The TorchScript exporter (``dynamo=False``) would
record each Python ``min``/``max``/``if`` on a size as a constant of the example and
give wrong crops at other sizes. ``check_onnx`` compares a file with PyTorch at sizes
unlike the traced example, which would show any size baked in.

Opset 18 by default: the lowest the exporter writes natively (asking for 17 converts
the graph down afterwards, which works here but is one more step).

The file's metadata (``metadata_props``) records the model's spec, class names, palette and
ignore label as JSON (``fcnseg.record``), for ``load_onnx`` and ``fcnseg predict``: a
Segmenter from the ONNX file names and colours classes as the checkpoint it came from. The
record also holds the sha256 of the weights (``weights_sha256``), checked when the file is
read: a damaged weight would otherwise run, and give wrong labels without a word.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .builder import resolve_spec
from .fileio import atomic_write
from .models import FCN, ModelSpec
from .models.normalization import from_record
from .scoring import score

__all__ = [
    "LABELS",
    "OnnxCheck",
    "OnnxRuntimeRunner",
    "check_onnx",
    "check_weights",
    "export_onnx",
    "load_onnx",
    "read_onnx_record",
    "require_module",
    "seal",
    "weights_digest",
    "with_label_outputs",
]

RECORD_KEY = "fcnseg.record"
WEIGHTS_KEY = "weights_sha256"  # in the record: what the file's initializers hash to
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.fx.experimental.symbolic_shapes",
    "torch.export",
    "onnxscript",
)


def require_module(module: str):
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"ONNX support needs the {module} package: pip install 'fcnseg[onnx]'"
        ) from None


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's internal chatter off the user's terminal.

    It logs the torchvision ops it skips, sympy's failures to simplify a size guard
    (harmless: the guard is kept as is), its opset conversion route and pytree
    deprecations. A failed opset conversion is reported by ``export_onnx`` itself.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Trace inference behaviour; a trace in training mode would also move BN statistics."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def onnx_record(
    model: FCN,
    classes: Mapping[str, Any] | None = None,
    palette: Mapping[str, Any] | None = None,
    ignore_index: int = 255,
    source: str | None = None,
) -> dict[str, str]:
    """The metadata an exported file carries: spec, class names and palette by task, and
    the sha256 of the checkpoint it came from when known (``fcnseg.engines``' cache)."""
    record = {
        "spec": model.spec.to_dict(),
        "classes": {task: list(names) for task, names in (classes or {}).items()},
        "palette": {task: [list(map(int, c)) for c in p] for task, p in (palette or {}).items()},
        "ignore_index": int(ignore_index),
    }
    if source:
        record["source_sha256"] = source
    return {RECORD_KEY: json.dumps(record)}


def weights_digest(model) -> str:
    """The sha256 of an ONNX model's weights: each initializer's name, element type, shape
    and bytes, in name order."""
    numpy_helper = require_module("onnx").numpy_helper
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda init: init.name):
        digest.update(f"{init.name}|{init.data_type}|{tuple(init.dims)}|".encode())
        digest.update(init.raw_data or numpy_helper.to_array(init).tobytes())
    return digest.hexdigest()


def seal(model) -> None:
    """Write the digest of the weights of ``model`` (an ``onnx.ModelProto`` with an fcnseg
    record) into its record; call it last, after every edit of the graph."""
    for entry in model.metadata_props:
        if entry.key == RECORD_KEY:
            record = json.loads(entry.value)
            record[WEIGHTS_KEY] = weights_digest(model)
            entry.value = json.dumps(record)


def check_weights(model, path: Path | str) -> None:
    """Refuse a file whose weights do not hash to the digest its record holds: a byte
    flipped on disk or in a copy. Files without a digest (older fcnseg) pass."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    try:
        expected = json.loads(meta[RECORD_KEY]).get(WEIGHTS_KEY)
    except (KeyError, ValueError, AttributeError):  # no record: read_onnx_record says so
        return
    if expected is not None and weights_digest(model) != expected:
        raise ValueError(
            f"{path}: its weights do not match the digest written with them (the file was "
            "damaged after it was written): export it again (fcnseg export onnx, or fcnseg "
            "quantize)"
        )


class _Positional(nn.Module):
    """The model with its inputs as positional tensors and its outputs as a tuple, in the
    spec's order: what the exporter traces."""

    def __init__(self, model: FCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores = score(self.model, dict(zip(self.model.spec.input_names, inputs, strict=True)))
        return tuple(scores[task] for task in self.model.spec.task_names)


def export_onnx(
    model: FCN,
    path: str | Path,
    *,
    opset: int = 18,
    example_size: tuple[int, int] = (224, 224),
    classes: Mapping[str, Any] | None = None,
    palette: Mapping[str, Any] | None = None,
    ignore_index: int = 255,
    source: str | None = None,
) -> Path:
    """Write ``model`` as one ONNX file with dynamic batch, height and width.

    The graph computes inference behaviour (dropout off, batch norm on its running
    statistics) whatever mode the model is in: the model is traced in eval mode and
    put back in its mode afterwards. ``example_size`` is the traced input's height and
    width; any other size runs as well. ``classes`` and ``palette`` (by task) go into the
    file's metadata, with ``source``, the checkpoint's sha256. The file is written
    atomically, with ordinary permissions.
    """
    require_module("onnxscript")  # the exporter's own dependency: fail with the install line
    onnx = require_module("onnx")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    height, width = example_size[-2:]
    examples = tuple(
        torch.zeros(1, item.channels, height, width, device=device) for item in model.spec.inputs
    )
    dynamic = torch.export.Dim.DYNAMIC
    with _quiet_exporter(), _eval_mode(model):
        try:
            program = torch.onnx.export(
                _Positional(model).eval(),
                examples,
                dynamo=True,
                opset_version=opset,
                input_names=list(model.spec.input_names),
                output_names=list(model.spec.task_names),
                # ``forward(*inputs)``: torch.export matches the varargs as one argument
                dynamic_shapes=(tuple({0: dynamic, 2: dynamic, 3: dynamic} for _ in examples),),
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; keep it as the cause
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(
                f"{model.name}: the ONNX exporter failed ({first}); try another --opset or "
                "--example-size, or report the model"
            ) from error
    written = program.model.opset_imports.get("")
    if written != opset:  # the exporter keeps its own opset when it cannot convert
        raise ValueError(
            f"the ONNX exporter cannot write opset {opset} for {model.name} (it wrote "
            f"{written}); pass --opset 17 or later"
        )
    program.model.metadata_props.update(onnx_record(model, classes, palette, ignore_index, source))
    exported = program.model_proto
    seal(exported)
    return atomic_write(path, lambda tmp: onnx.save(exported, str(tmp)))


class OnnxRuntimeRunner:
    """An exported model in onnxruntime: ``runner(inputs)`` maps normalised N x C x H x W
    arrays (a dict by input name, or one array for a single-input model) to logits by task.

    ``spec``, ``classes``, ``palette`` and ``ignore_index`` come from the file (files of
    fcnseg 0.1 recorded the model name, class count and normalisation only).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        labels: bool = False,
    ) -> None:
        ort = require_module("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:  # else onnxruntime's default: one thread per physical core
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        graph = with_label_outputs(path) if labels else None
        try:
            self.session = ort.InferenceSession(
                graph or str(path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as error:  # onnxruntime raises its own types for bad files
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{path}: not a loadable ONNX model ({first})") from None
        self.path = path
        record = read_onnx_record(self.session.get_modelmeta().custom_metadata_map, path)
        self.spec: ModelSpec = record["spec"]
        self.classes = record.get("classes") or None
        self.palette = record.get("palette") or None
        self.ignore_index = int(record.get("ignore_index", 255))
        self.input_names = [item.name for item in self.session.get_inputs()]
        outputs = [item.name for item in self.session.get_outputs()]
        self.output_names = [name for name in outputs if not name.startswith(LABELS)]
        self.label_names = [name for name in outputs if name.startswith(LABELS)]

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def normalization(self):
        """The input normalisation the file records, or a dict by input for a multi-input
        model (the graph takes normalised inputs, as the model does)."""
        norms = {item.name: item.normalization for item in self.spec.inputs}
        return next(iter(norms.values())) if len(norms) == 1 else norms

    @property
    def num_classes(self) -> int | dict[str, int]:
        classes = self.spec.task_classes
        return next(iter(classes.values())) if len(classes) == 1 else classes

    def __call__(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, self._feed(inputs))
        return dict(zip(self.spec.task_names, outputs, strict=True))

    @property
    def has_labels(self) -> bool:
        return bool(self.label_names)

    def labels(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The N x H x W class of each pixel by task, from the arg-max inside the graph
        (``labels=True``): no scores leave onnxruntime."""
        outputs = self.session.run(self.label_names, self._feed(inputs))
        return dict(zip(self.spec.task_names, outputs, strict=True))

    def _feed(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(inputs, Mapping):
            if len(self.input_names) != 1:
                raise ValueError(f"this model reads {self.input_names}: pass a dict by name")
            inputs = {self.input_names[0]: inputs}
        feed = {}
        for name in self.input_names:
            if name not in inputs:
                raise ValueError(f"this model reads {self.input_names}, got {sorted(inputs)}")
            array = inputs[name]
            if array.ndim != 4:
                raise ValueError(f"input {name!r} must be N x C x H x W, got shape {array.shape}")
            feed[name] = np.ascontiguousarray(array, dtype=np.float32)
        return feed


# The outputs ``with_label_outputs`` adds: "labels:<task>", after the scores "<task>"
LABELS = "labels:"


def with_label_outputs(path: Path) -> bytes | None:
    """The ONNX file at ``path`` with, after each task's scores, their arg-max over the
    classes as an extra output ``labels:<task>`` (N x H x W, uint8 when the classes fit, as
    ``Segmenter.predict`` gives): an engine that runs it hands over the label map instead
    of C times its size in scores. None without the onnx package (the scores still work)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return None
    model = onnx.load(str(path))
    graph = model.graph
    for output in list(graph.output):
        classes = output.type.tensor_type.shape.dim[1].dim_value
        indices = f"{LABELS}{output.name}:int64"
        graph.node.append(helper.make_node("ArgMax", [output.name], [indices], axis=1, keepdims=0))  # fmt: skip
        name, kind = f"{LABELS}{output.name}", TensorProto.INT64
        if 0 < classes <= 256:
            graph.node.append(helper.make_node("Cast", [indices], [name], to=TensorProto.UINT8))
            kind = TensorProto.UINT8
        else:
            graph.node.append(helper.make_node("Identity", [indices], [name]))
        graph.output.append(helper.make_tensor_value_info(name, kind, None))
    return model.SerializeToString()


def read_onnx_record(meta: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The record in an exported file's metadata; 0.1's name, class count and
    normalisation; a file without either cannot tell its classes."""
    try:
        if RECORD_KEY in meta:
            record = json.loads(meta[RECORD_KEY])
            record["spec"] = ModelSpec.from_dict(record["spec"])
            return record
        if "fcnseg.model" in meta:
            spec = resolve_spec(meta["fcnseg.model"], num_classes=int(meta["fcnseg.num_classes"]))
            norm = from_record(json.loads(meta["fcnseg.normalization"]))
            inputs = (dataclasses.replace(spec.inputs[0], normalization=norm),)
            return {"spec": dataclasses.replace(spec, inputs=inputs)}
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: malformed fcnseg metadata ({error})") from None
    raise ValueError(
        f"{path}: no fcnseg metadata (spec, classes, normalisation): export it with "
        "fcnseg export onnx"
    )


def load_onnx(
    path: str | Path, *, providers: Sequence[str] | None = None, threads: int | None = None
) -> OnnxRuntimeRunner:
    """An onnxruntime session for an exported FCN, callable on numpy batches; a file whose
    weights do not match the digest it records is refused (``check_weights``)."""
    runner = OnnxRuntimeRunner(path, providers=providers, threads=threads)
    check_weights(require_module("onnx").load(str(path)), path)
    return runner


@dataclass(frozen=True)
class OnnxCheck:
    """PyTorch against onnxruntime at one input size."""

    size: tuple[int, int]
    max_abs_diff: float
    max_abs_logit: float  # the scale the difference is to be read against
    spread: float  # the least (max - min) of a task's PyTorch scores

    @property
    def proves_nothing(self) -> bool:
        """Whether PyTorch gave some task one score everywhere (all zero for score layers
        still at their zero init): any graph that outputs that constant would match."""
        return self.spread == 0.0

    def __str__(self) -> str:
        height, width = self.size
        if self.proves_nothing:
            value = "all zero" if self.max_abs_logit == 0.0 else "one constant"
            return (
                f"{height}x{width}: proves nothing: the model's scores are {value} (e.g. "
                "untrained score layers), so any graph giving that value would match"
            )
        return (
            f"{height}x{width}: max abs diff {self.max_abs_diff:.2e} "
            f"(logits up to {self.max_abs_logit:.2e})"
        )


def _images(model: FCN, shape: tuple[int, ...], generator: torch.Generator) -> dict:
    """Random inputs of every declared input, normalised as the model expects (images as
    0..255, depth as 500..10000)."""
    batch, height, width = shape
    images = {}
    for item in model.spec.inputs:
        raw = torch.rand((batch, item.channels, height, width), generator=generator)
        scale = 10000.0 if item.name == "depth" else 255.0
        images[item.name] = item.normalization(raw * scale)
    return images


def check_onnx(
    model: FCN,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = ((97, 131), (160, 224)),
    *,
    batch: int = 2,
    seed: int = 0,
) -> list[OnnxCheck]:
    """Compare the ONNX file with PyTorch (eval mode) on random inputs of each size,
    every task's scores.

    Sizes unlike the traced example show whether the crops really follow the input. A
    different output shape raises; the largest difference over the tasks is returned,
    with whether it proves anything (``OnnxCheck.proves_nothing``: constant scores match
    any graph that gives the constant). The model's mode is left as it was.
    """
    runner = load_onnx(path)
    generator = torch.Generator().manual_seed(seed)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    checks = []
    with _eval_mode(model):
        for height, width in sizes:
            images = _images(model, (batch, height, width), generator)
            with torch.no_grad():
                expected = score(model, {k: v.to(device) for k, v in images.items()})
            got = runner({name: image.numpy() for name, image in images.items()})
            diff, scale, spread = 0.0, 0.0, float("inf")
            for task, scores in expected.items():
                scores = scores.cpu().numpy()
                if got[task].shape != scores.shape:
                    raise ValueError(
                        f"{path}: the ONNX model gives {got[task].shape} at {height}x{width}, "
                        f"PyTorch {scores.shape}: the export baked a size into the graph"
                    )
                diff = max(diff, float(np.abs(got[task] - scores).max()))
                scale = max(scale, float(np.abs(scores).max()))
                spread = min(spread, float(scores.max() - scores.min()))
            checks.append(OnnxCheck((height, width), diff, scale, spread))
    return checks
