"""Post-training int8 quantization of an exported FCN, and how far its labels move.

    fcnseg quantize --checkpoint best.pt --data camvid --root data/CamVid --out model.int8.onnx

onnxruntime's static quantizer writes a QDQ graph (QuantizeLinear / DequantizeLinear pairs
around each quantized operation), which onnxruntime and OpenVINO both run with int8
kernels: weights int8 per output channel, activations uint8 per tensor, their ranges
calibrated on training images run whole (up to 200). The toolkit: onnxruntime's quantizer,
as it is already a dependency of the ONNX engines and its QDQ file runs on both; OpenVINO's
NNCF would add a package and give a file only OpenVINO runs.

By default the FCN head stays in fp32 (``keep_head``): the score layers, the upsampling
deconvolutions, the crops and the skip fusions, every operation downstream of a score
layer. They are a sliver of the compute (the backbone's convolutions are nearly all of
it), and their outputs are the class scores themselves, whose small differences decide the
label at every pixel near a class border: quantizing them cost label agreement on CamVid
(docs/BENCHMARKS.md). ``compare`` measures what int8 changes on a labelled split.

Mixed precision (``fp32_activations``): ``sensitive_activations`` ranks the int8 file's
quantized activations by their signal-to-quantization-noise ratio (each fp32 tensor, on a
few calibration images, against itself rounded to the int8 file's grid for it);
``keep_fp32`` then takes the QuantizeLinear / DequantizeLinear pair off the worst few, which
buys back agreement where one per-tensor uint8 scale serves a tensor badly. Only the tensor
leaves the int8 grid: the operation writing it keeps its int8 inputs and weights, and the
one reading it its int8 weights. ``fewest_fp32`` finds how many to keep for a share of
labels (``Agreement``: equal to fp32's on images the calibration did not see).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engines import onnx_module
from .export import RECORD_KEY, check_weights, require_module, seal
from .fileio import atomic_write
from .metrics import MultiTaskConfusion, class_labels
from .scoring import Scorer, model_inputs, model_targets, score, task_metrics

__all__ = [
    "METHODS",
    "Agreement",
    "CalibrationImages",
    "Comparison",
    "compare",
    "fewest_fp32",
    "head_nodes",
    "keep_fp32",
    "labelled_samples",
    "quantize_onnx",
    "sensitive_activations",
]

METHODS = ("minmax", "percentile", "entropy")
MAX_CALIBRATION = 200


class _Reader:
    """Calibration batches for onnxruntime's calibrator (its CalibrationDataReader protocol,
    with the ``set_range`` its strided calibration calls). ``batches`` is a sequence, read
    lazily: the calibrator keeps every activation of the batches of one range, so ranges
    of ``stride`` batches bound its memory (each range's min/max are merged as it goes)."""

    def __init__(self, batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.batches = batches
        self._indices: Iterator[int] = iter(range(len(batches)))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._indices = iter(range(start_index, min(end_index, len(self.batches))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._indices, None)
        if index is None:
            return None
        return {k: np.asarray(v, np.float32) for k, v in self.batches[index].items()}


def _stride(count: int, most: int = 8) -> int:
    """The largest number of batches up to ``most`` that divides ``count`` (onnxruntime
    wants whole ranges)."""
    return next(size for size in range(min(most, count), 0, -1) if count % size == 0)


def head_nodes(model) -> list[str]:
    """The names of the head's nodes: each score layer (a Conv whose weights are a head's)
    and every node downstream of one."""
    weights = {init.name for init in model.graph.initializer if "head" in init.name}
    heads = {node.name for node in model.graph.node if node.op_type == "Conv"
             and any(name in weights and "score" in name for name in node.input)}  # fmt: skip
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {node.name: node for node in model.graph.node}
    found, stack = set(heads), list(heads)
    while stack:
        for output in by_name[stack.pop()].output:
            for node in consumers.get(output, []):
                if node.name not in found:
                    found.add(node.name)
                    stack.append(node.name)
    return sorted(found)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if name not in methods:
        raise ValueError(f"unknown calibration {name!r}: choose one of {', '.join(METHODS)}")
    return methods[name]


def _not_quantizer_chatter(record: logging.LogRecord) -> bool:
    """False for what onnxruntime logs below ERROR: its advice to pre-process the graph
    (shape inference, which an fcnseg export has) and notes on what it leaves alone."""
    return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Keep onnxruntime's quantizer off the terminal while it runs, and the user's logging
    as it was.

    The quantizer logs through the root logger (``logging.warning``), which would also give
    a root logger without handlers one to stderr for good (``logging.basicConfig``). For
    the call, the root logger drops the quantizer's records below ERROR and, when it has no
    handler, holds Python's last-resort one (what prints otherwise unhandled records), so
    nothing is configured; both come off afterwards."""
    root = logging.getLogger()
    stand_in = [] if root.handlers or logging.lastResort is None else [logging.lastResort]
    for handler in stand_in:
        root.addHandler(handler)
    root.addFilter(_not_quantizer_chatter)
    try:
        yield
    finally:
        root.removeFilter(_not_quantizer_chatter)
        for handler in stand_in:
            root.removeHandler(handler)


def quantize_onnx(
    fp32: Path | str,
    out: Path | str,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    keep_head: bool = True,
    method: str = "minmax",
    fp32_activations: Sequence[str] = (),
) -> Path:
    """Write the int8 (QDQ, per-channel weights) version of the fp32 file ``fp32``, its
    activation ranges calibrated on ``batches`` (a sequence of normalised N x C x H x W
    arrays by input name, read lazily); ``fp32_activations`` (tensor names) stay fp32
    (``keep_fp32``). The fcnseg record (spec, classes, palette) is carried over, with the
    digest of the int8 file's own weights; ``fp32`` must match its own. Atomic."""
    require_module("onnxruntime")
    if not len(batches):
        raise ValueError("no calibration images: give one or more")
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source = onnx.load(str(fp32))
    check_weights(source, fp32)
    exclude = set(head_nodes(source) if keep_head else [])
    record = {prop.key: prop.value for prop in source.metadata_props}
    with tempfile.TemporaryDirectory(prefix="fcnseg-quantize-") as folder:
        written = Path(folder) / "int8.onnx"
        with _quiet_quantizer():
            quantize_static(
                str(fp32),
                str(written),
                _Reader(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=_method(method),
                nodes_to_exclude=sorted(exclude),
                # ranges of a few batches at a time; onnxruntime's CalibMaxIntermediateOutputs
                # drops what it collected instead of merging it (onnxruntime 1.32)
                extra_options={"CalibStridedMinMax": _stride(len(batches))},
            )
        model = onnx.load(str(written))
    how = {"int8": "qdq per-channel", "calibration": method,
           "head": "fp32" if keep_head else "int8", "fp32_activations": []}  # fmt: skip
    _mark(model, record, how)
    if fp32_activations:
        _unquantize(model, source, fp32_activations)
    seal(model)
    return atomic_write(out, lambda tmp: onnx.save(model, str(tmp)))


def keep_fp32(int8: Path | str, fp32: Path | str, tensors: Sequence[str]) -> Path:
    """Rewrite the int8 file ``int8`` (written by ``quantize_onnx`` from the file ``fp32``)
    with ``tensors`` (activation names) in fp32: no recalibration, the other ranges are kept.
    Its weights' digest is written anew. Atomic; returns ``int8``."""
    require_module("onnxruntime")
    import onnx

    model, source = onnx.load(str(int8)), onnx.load(str(fp32))
    check_weights(model, int8)
    check_weights(source, fp32)
    _unquantize(model, source, tensors)
    seal(model)
    return atomic_write(int8, lambda tmp: onnx.save(model, str(tmp)))


def _unquantize(model, source, tensors: Sequence[str]) -> None:
    """Take the QuantizeLinear of each of ``tensors`` and its DequantizeLinears out of the
    int8 ``model`` (its readers then read the tensor itself). Where the quantizer folded the
    fp32 ``source``'s activation into the operation writing the tensor (a Clip after a Conv:
    the uint8 range did the clamp), a copy of the activation goes back in. The record's
    ``fp32_activations`` lists them."""
    graph = model.graph
    nodes, grids = list(graph.node), set()
    for name in tensors:
        quantize = next((n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == name), None)  # fmt: skip
        if quantize is None:
            raise ValueError(f"activation {name!r} is not quantized in the int8 file: "
                             "name one that sensitive_activations lists")  # fmt: skip
        dequantized = {n.output[0] for n in nodes
                       if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]}  # fmt: skip
        removed = [n for n in nodes if n is quantize or n.output[0] in dequantized]
        grids |= {grid for node in removed for grid in node.input[1:]}
        gone = {id(node) for node in removed}  # by identity: a message's == compares contents
        nodes = [n for n in nodes if id(n) not in gone]
        value = _restore_activation(model, source, nodes, name)
        for node in nodes:
            for index, input_name in enumerate(node.input):
                if input_name in dequantized:
                    node.input[index] = value
    del graph.node[:]
    graph.node.extend(nodes)
    used = {input_name for node in nodes for input_name in node.input}
    unused = [init for init in graph.initializer if init.name in grids - used]
    for init in unused:  # the removed pairs' scales and zero points
        graph.initializer.remove(init)
    _mark_fp32(model, tensors)


def _restore_activation(model, source, nodes: list, name: str) -> str:
    """The tensor the readers of ``name`` should read: ``name`` itself, or the output of a
    copy of the source's activation that int8 folded away, inserted after ``name``'s writer."""
    writer = next((n for n in source.graph.node if name in n.output), None)
    if writer is None:  # a graph input
        return name
    position, now = next((i, n) for i, n in enumerate(nodes) if name in n.output)
    if now.op_type == writer.op_type:
        return name
    if writer.op_type not in ("Clip", "Relu"):
        raise ValueError(f"activation {name!r}: int8 replaced its {writer.op_type} writer")
    activation = copy.deepcopy(writer)
    activation.input[0], activation.output[0] = name, f"{name}_fp32"
    activation.name = f"{writer.name}_fp32"
    nodes.insert(position + 1, activation)
    _carry_constants(model, source, nodes, activation.input[1:])
    return activation.output[0]


def _carry_constants(model, source, nodes: list, names: Iterable[str]) -> None:
    """Copy the constant inputs ``names`` (a Clip's bounds) from ``source`` where ``model``
    lost them with the node that read them (a Constant goes first: it reads nothing)."""
    have = {init.name for init in model.graph.initializer}
    have |= {output for node in nodes for output in node.output}
    for name in names:
        if not name or name in have:
            continue
        init = next((i for i in source.graph.initializer if i.name == name), None)
        if init is not None:
            model.graph.initializer.append(copy.deepcopy(init))
        else:
            constant = next(n for n in source.graph.node if name in n.output)
            nodes.insert(0, copy.deepcopy(constant))
        have.add(name)


def _mark_fp32(model, tensors: Sequence[str]) -> None:
    for entry in model.metadata_props:
        if entry.key == RECORD_KEY:
            data = json.loads(entry.value)
            how = data.setdefault("quantization", {})
            how["fp32_activations"] = how.get("fp32_activations", []) + list(tensors)
            entry.value = json.dumps(data)


def _mark(model, record: Mapping[str, str], how: Mapping[str, Any]) -> None:
    """The source's metadata, with how it was quantized in the fcnseg record."""
    del model.metadata_props[:]
    for key, value in record.items():
        if key == RECORD_KEY:
            data = json.loads(value)
            data["quantization"] = dict(how)
            value = json.dumps(data)
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def sensitive_activations(
    fp32: Path | str,
    int8: Path | str,
    batches: Sequence[Mapping[str, np.ndarray]],
    images: int = 4,
) -> list[tuple[str, float]]:
    """The activations the int8 file quantizes, least faithful first: (tensor name,
    signal-to-quantization-noise ratio in dB), each tensor of the fp32 file on its first
    ``images`` batches rounded to the int8 file's grid for it (its QuantizeLinear's scale and
    zero point). The fp32 values, not the int8 file's own: the quantizer folds a ReLU6 into
    the convolution before it and lets the uint8 range clip, so there the tensor before
    rounding is not yet the activation."""
    require_module("onnxruntime")
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    graph = onnx.load(str(int8)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    grids = {node.input[0]: (constants[node.input[1]], constants[node.input[2]])
             for node in graph.node if node.op_type == "QuantizeLinear"
             and node.input[1] in constants and node.input[2] in constants}  # fmt: skip
    feeds = [
        {k: np.asarray(v, np.float32) for k, v in batches[i].items()}
        for i in range(min(images, len(batches)))
    ]
    if not feeds:
        raise ValueError("no calibration images: give one or more")
    with tempfile.TemporaryDirectory(prefix="fcnseg-sensitivity-") as folder:
        augmented = Path(folder) / "augmented.onnx"  # every tensor an output
        modify_model_output_intermediate_tensors(str(fp32), str(augmented))
        activations = collect_activations(str(augmented), feeds)
    for name in feeds[0]:  # the graph's inputs are quantized too
        activations.setdefault(name, [feed[name] for feed in feeds])
    ratios = {
        name: _sqnr(activations[name], [_on_grid(x, *grid) for x in activations[name]])
        for name, grid in grids.items()
        if name in activations
    }
    return sorted(ratios.items(), key=lambda item: item[1])


def fewest_fp32(
    int8: Path | str,
    fp32: Path | str,
    ranked: Sequence[str],
    agreement: Callable[[Path], float],
    target: float,
) -> tuple[list[str], dict[int, float]]:
    """Rewrite the int8 file ``int8`` (from the file ``fp32``) with the fewest of ``ranked``
    (activation names, the worst rounded first) in fp32 whose file's ``agreement`` (share of
    labels equal to fp32's) reaches ``target``: the file as it is, then the worst 1, 2, 4, ...
    until one count reaches it, then halving the step back to the fewest that does (the
    share grows with the count, near enough). When no count reaches it, the count with the
    highest share. Atomic. Returns the kept names and each tried count's share."""
    tried: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="fcnseg-mixed-") as folder:

        def file_of(count: int) -> Path:
            candidate = Path(folder) / f"fp32-{count}.onnx"
            if not candidate.exists():
                shutil.copyfile(int8, candidate)
                if count:
                    keep_fp32(candidate, fp32, ranked[:count])
            return candidate

        def reaches(count: int) -> bool:
            if count not in tried:
                tried[count] = agreement(file_of(count))
            return tried[count] >= target

        count = _fewest(len(ranked), reaches)
        if count is None:
            count = max(sorted(tried), key=lambda c: tried[c])  # the first of the best
        if count:
            atomic_write(int8, lambda tmp: shutil.copyfile(file_of(count), tmp))
    return list(ranked[:count]), tried


def _fewest(most: int, reaches: Callable[[int], bool]) -> int | None:
    """The least count in 0..``most`` that ``reaches``, by doubling then bisection (None if
    not even ``most`` does)."""
    if reaches(0):
        return 0
    low, high = 0, 1  # low never reaches
    while high < most and not reaches(high):
        low, high = high, min(2 * high, most)
    if high > most or not reaches(high):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(middle) else (middle, high)
    return high


class Agreement:
    """The share of pixels to which an ONNX file (run by onnxruntime) gives the label the fp32
    file gives, over ``batches`` (normalised arrays by input name): ``Agreement(...)(path)``.
    The fp32 labels are taken once."""

    def __init__(self, fp32: Path | str, batches, spec, threads: int | None = None) -> None:
        self.spec, self.threads = spec, threads
        self.batches = [{k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in batch.items()}
                        for batch in batches]  # fmt: skip
        if not self.batches:
            raise ValueError("no images to compare int8 and fp32 labels on")
        self.expected = self._labels(fp32)

    def _labels(self, path: Path | str) -> list[dict[str, torch.Tensor]]:
        module = onnx_module("onnxruntime", path, self.spec, self.threads)
        return [{task: class_labels(s).to(torch.int16) for task, s in score(module, batch).items()}
                for batch in self.batches]  # fmt: skip

    def __call__(self, path: Path | str) -> float:
        pairs = zip(self._labels(path), self.expected, strict=True)
        return float(np.mean([share for a, b in pairs for share in _label_shares(a, b)]))


def _label_shares(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[float]:
    """Per task, the share of pixels ``a`` and ``b`` (labels by task) label alike."""
    return [(a[task] == b[task]).float().mean().item() for task in a]


def _on_grid(values: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """``values`` quantized and dequantized as QuantizeLinear / DequantizeLinear do."""
    low, high = np.iinfo(zero.dtype).min, np.iinfo(zero.dtype).max
    steps = np.clip(np.rint(values / scale) + zero.astype(np.int64), low, high)
    return ((steps - zero.astype(np.int64)) * scale).astype(np.float32)


def _sqnr(exact: Sequence[np.ndarray], rounded: Sequence[np.ndarray]) -> float:
    """20 log10(|x| / |x - q|) in dB over all the arrays: higher is more faithful."""
    signal = np.sqrt(sum(float(np.square(x.astype(np.float64)).sum()) for x in exact))
    noise = np.sqrt(sum(float(np.square(x.astype(np.float64) - q).sum())
                        for x, q in zip(exact, rounded, strict=True)))  # fmt: skip
    if noise == 0.0:
        return float("inf")  # every value on the grid: int8 keeps it exactly
    if signal == 0.0:
        return float("-inf")  # zeros made into something else
    return float(20 * np.log10(signal / noise))


# ---------------------------------------------------------------------------------------------
# What int8 changes


@dataclass
class Comparison:
    """fp32 against int8 on a labelled split: the share of pixels given the same label,
    the worst image's share, and each file's metrics by task."""

    images: int
    agreement: float
    worst_agreement: float
    fp32: dict[str, dict[str, Any]]
    int8: dict[str, dict[str, Any]]

    def lines(self) -> list[str]:
        rows = [
            f"{self.images} images: {100 * self.agreement:.2f}% of labels equal to fp32's "
            f"(worst image {100 * self.worst_agreement:.2f}%)"
        ]
        for task in self.fp32:
            a, b = self.fp32[task]["mean_iu"], self.int8[task]["mean_iu"]
            rows.append(
                f"{task}: mean IU fp32 {100 * a:.2f}, int8 {100 * b:.2f} ({100 * (b - a):+.2f})"
            )
        return rows


def compare(
    fp32: Scorer, int8: Scorer, samples: Iterable[tuple[dict, dict]], spec, ignore_index: int
) -> Comparison:
    """Run both scorers (normalised batch by input -> scores by task) over ``samples``
    (batch, labels by task) and compare their labels."""
    confusions = [MultiTaskConfusion(spec.task_classes, ignore_index) for _ in range(2)]
    agreements, count = [], 0
    for batch, targets in samples:
        labels = []
        for scorer, confusion in zip((fp32, int8), confusions, strict=True):
            predicted = {task: class_labels(s) for task, s in score(scorer, batch).items()}
            confusion.update(predicted, targets)
            labels.append(predicted)
        agreements.extend(_label_shares(*labels))
        count += 1
    if not count:
        raise ValueError("no images to compare fp32 and int8 on")
    metrics = [task_metrics(confusion) for confusion in confusions]
    return Comparison(
        count, float(np.mean(agreements)), float(np.min(agreements)), metrics[0], metrics[1]
    )


class CalibrationImages:
    """``count`` items of a dataset from ``start`` on (the first ones by default) as
    normalised numpy batches of one, by input name, read when asked (what ``quantize_onnx``
    calibrates on)."""

    def __init__(self, dataset, spec, count: int, start: int = 0) -> None:
        self.dataset, self.spec, self.start = dataset, spec, min(start, len(dataset))
        self.count = min(count, len(dataset) - self.start)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        image, _ = self.dataset[self.start + index]
        return {k: v[None].numpy() for k, v in model_inputs(image, self.spec).items()}


def labelled_samples(dataset, spec, limit: int | None = None):
    """(normalised batch of one by input, labels by task) for the first ``limit`` items."""
    for index in range(min(limit or len(dataset), len(dataset))):
        image, label = dataset[index]
        inputs = {k: v[None] for k, v in model_inputs(image, spec).items()}
        targets = {k: torch.as_tensor(v)[None] for k, v in model_targets(label, spec).items()}
        yield inputs, targets

