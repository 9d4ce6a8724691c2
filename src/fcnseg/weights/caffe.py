"""Read Caffe .caffemodel files without Caffe, and convert them to fcnseg state dicts.

The FCN reference models and the classifiers they were fine-tuned from (VGG_ILSVRC_16,
BVLC AlexNet, BVLC GoogLeNet) are serialised ``caffe.NetParameter`` messages. Only the
fields that carry weights are read; every field number below is from BVLC Caffe's
``src/caffe/proto/caffe.proto``:

- NetParameter: ``name = 1``, ``layer = 100`` (LayerParameter, the V2 format),
  ``layers = 2`` (V1LayerParameter, the legacy format of the 2014 model zoo).
- LayerParameter: ``name = 1``, ``type = 2`` (string), ``bottom = 3``, ``top = 4``,
  ``blobs = 7``.
- V1LayerParameter: ``layer = 1`` (V0LayerParameter), ``bottom = 2``, ``top = 3``,
  ``name = 4``, ``type = 5`` (enum LayerType), ``blobs = 6``.
- V0LayerParameter: ``name = 1``, ``type = 2`` (string), ``blobs = 50``.
- BlobProto: ``num = 1``, ``channels = 2``, ``height = 3``, ``width = 4`` (legacy 4-D
  shape), ``data = 5`` (packed float), ``diff = 6`` (gradients, skipped),
  ``shape = 7`` (BlobShape), ``double_data = 8`` (packed double), ``double_diff = 9``.
- BlobShape: ``dim = 1`` (packed int64).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..surgery import TransplantReport, transplant
from .prototxt import read_prototxt, repeated
from .protowire import (
    LENGTH,
    VARINT,
    CaffeFormatError,
    Field,
    RepeatedNumbers,
    iter_fields,
    packed_varints,
    to_int64,
)

__all__ = [
    "CaffeLayer",
    "CaffeNet",
    "StateDictReport",
    "parse_caffemodel",
    "read_caffemodel",
    "caffe_to_state_dict",
    "convert_caffe",
    "inspect",
    "V1_LAYER_TYPES",
]

# V1LayerParameter.LayerType numbers (caffe.proto) -> (enum name, V2 type string), the V2
# strings as Caffe's UpgradeV1LayerType (src/caffe/util/upgrade_proto.cpp) writes them.
V1_LAYER_TYPES: dict[int, tuple[str, str]] = {
    0: ("NONE", ""),
    1: ("ACCURACY", "Accuracy"),
    2: ("BNLL", "BNLL"),
    3: ("CONCAT", "Concat"),
    4: ("CONVOLUTION", "Convolution"),
    5: ("DATA", "Data"),
    6: ("DROPOUT", "Dropout"),
    7: ("EUCLIDEAN_LOSS", "EuclideanLoss"),
    8: ("FLATTEN", "Flatten"),
    9: ("HDF5_DATA", "HDF5Data"),
    10: ("HDF5_OUTPUT", "HDF5Output"),
    11: ("IM2COL", "Im2col"),
    12: ("IMAGE_DATA", "ImageData"),
    13: ("INFOGAIN_LOSS", "InfogainLoss"),
    14: ("INNER_PRODUCT", "InnerProduct"),
    15: ("LRN", "LRN"),
    16: ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"),
    17: ("POOLING", "Pooling"),
    18: ("RELU", "ReLU"),
    19: ("SIGMOID", "Sigmoid"),
    20: ("SOFTMAX", "Softmax"),
    21: ("SOFTMAX_LOSS", "SoftmaxWithLoss"),
    22: ("SPLIT", "Split"),
    23: ("TANH", "TanH"),
    24: ("WINDOW_DATA", "WindowData"),
    25: ("ELTWISE", "Eltwise"),
    26: ("POWER", "Power"),
    27: ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"),
    28: ("HINGE_LOSS", "HingeLoss"),
    29: ("MEMORY_DATA", "MemoryData"),
    30: ("ARGMAX", "ArgMax"),
    31: ("THRESHOLD", "Threshold"),
    32: ("DUMMY_DATA", "DummyData"),
    33: ("SLICE", "Slice"),
    34: ("MVN", "MVN"),
    35: ("ABSVAL", "AbsVal"),
    36: ("SILENCE", "Silence"),
    37: ("CONTRASTIVE_LOSS", "ContrastiveLoss"),
    38: ("EXP", "Exp"),
    39: ("DECONVOLUTION", "Deconvolution"),
}
_V1_BY_NAME = {enum: v2 for enum, v2 in V1_LAYER_TYPES.values()}

# field number -> role, one table per layer message version (numbers: caffe.proto)
_V2_FIELDS = {1: "name", 2: "type", 3: "bottom", 4: "top", 7: "blobs"}
_V1_FIELDS = {1: "v0", 2: "bottom", 3: "top", 4: "name", 5: "type", 6: "blobs"}
_V0_FIELDS = {1: "name", 2: "type", 50: "blobs"}
_MAX_AXES = 32  # Caffe's kMaxBlobAxes
_MAX_COUNT = 2**31 - 1  # Caffe counts blob elements in an int (INT_MAX)


@dataclass
class CaffeLayer:
    """One layer of a .caffemodel: its name, V2 type string and parameter blobs."""

    name: str
    type: str
    blobs: list[np.ndarray]
    bottom: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)


@dataclass
class CaffeNet:
    """A decoded NetParameter; ``version`` is "V2" (``layer``) or "V1" (``layers``)."""

    name: str
    version: str
    layers: list[CaffeLayer]


def _expect(item: Field, wire_type: int, what: str) -> None:
    if item.wire_type != wire_type:
        raise CaffeFormatError(f"{what} (field {item.number}) has wire type {item.wire_type}")


def _string(item: Field, what: str) -> str:
    _expect(item, LENGTH, what)
    return bytes(item.value).decode("utf-8", errors="replace")


def _parse_shape(view: memoryview, depth: int) -> tuple[int, ...]:
    dims: list[int] = []
    for item in iter_fields(view, depth=depth):
        if item.number == 1 and item.wire_type == LENGTH:  # BlobShape.dim, packed int64
            dims.extend(to_int64(value) for value in packed_varints(item.value))
        elif item.number == 1:  # the same field written unpacked
            _expect(item, VARINT, "BlobShape.dim")
            dims.append(to_int64(item.value))
    return _check_dims(dims)


def _check_dims(dims: list[int]) -> tuple[int, ...]:
    """Caffe's limits (Blob::Reshape): at most 32 axes, no negative dim, count < 2^31."""
    nonzero = math.prod(dim for dim in dims if dim)
    if len(dims) > _MAX_AXES or any(dim < 0 for dim in dims) or nonzero > _MAX_COUNT:
        raise CaffeFormatError(f"invalid blob shape {dims[:8]} (negative, too large, or >32 axes)")
    return tuple(dims)


def _parse_blob(view: memoryview, depth: int) -> np.ndarray:
    """A BlobProto as an array of its shape; data only, never the diff."""
    shape, legacy = None, {}
    floats, doubles = RepeatedNumbers("<f4"), RepeatedNumbers("<f8")
    for item in iter_fields(view, depth=depth):
        if item.number == 7:
            _expect(item, LENGTH, "BlobProto.shape")
            shape = _parse_shape(item.value, depth + 1)
        elif item.number == 5:
            floats.add(item)
        elif item.number == 8:
            doubles.add(item)
        elif item.number in (1, 2, 3, 4):  # num, channels, height, width
            _expect(item, VARINT, "BlobProto legacy dimension")
            legacy[item.number] = to_int64(item.value)
    data = doubles.array()  # Caffe's Blob::FromProto prefers double_data when present
    data = data if data.size else floats.array()
    if legacy:  # Blob::FromProto: any legacy dim wins over `shape` and makes a 4-D blob
        shape = _check_dims([legacy.get(i, 0) for i in (1, 2, 3, 4)])
    shape = () if shape is None else shape  # no shape at all: a scalar, as in Caffe
    if math.prod(shape) != data.size:
        raise CaffeFormatError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _layer_type(item: Field) -> str:
    if item.wire_type == VARINT:  # V1 enum LayerType
        return V1_LAYER_TYPES.get(item.value, ("", f"V1LayerType({item.value})"))[1]
    return _string(item, "layer type")


def _parse_layer(view: memoryview, roles: dict[int, str], depth: int) -> CaffeLayer:
    layer = CaffeLayer(name="", type="", blobs=[])
    for item in iter_fields(view, depth=depth):
        role = roles.get(item.number)
        if role == "blobs":
            _expect(item, LENGTH, "layer blob")
            layer.blobs.append(_parse_blob(item.value, depth + 1))
        elif role == "v0":  # V1 files upgraded from V0 may keep everything in here
            _expect(item, LENGTH, "V0 layer")
            _merge_v0(layer, _parse_layer(item.value, _V0_FIELDS, depth + 1))
        elif role == "type":
            layer.type = _layer_type(item)
        elif role in ("bottom", "top"):
            getattr(layer, role).append(_string(item, role))
        elif role == "name":
            layer.name = _string(item, "layer name")
    return layer


def _merge_v0(layer: CaffeLayer, v0: CaffeLayer) -> None:
    layer.name = layer.name or v0.name
    layer.type = layer.type or v0.type
    layer.blobs = layer.blobs or v0.blobs


def parse_caffemodel(data: bytes | memoryview) -> CaffeNet:
    """Decode a serialised NetParameter; raises ``CaffeFormatError`` on any malformed input."""
    name, v2, v1 = "", [], []
    for item in iter_fields(data):
        if item.number == 1:
            name = _string(item, "net name")
        elif item.number in (100, 2):
            _expect(item, LENGTH, "layer")
            layers, roles = (v2, _V2_FIELDS) if item.number == 100 else (v1, _V1_FIELDS)
            try:
                layers.append(_parse_layer(item.value, roles, depth=1))
            except CaffeFormatError as err:
                raise CaffeFormatError(f"layer #{len(v2) + len(v1)}: {err}") from None
    if v2 and v1:  # Caffe's UpgradeV1Net refuses this mix too
        raise CaffeFormatError("the net has both V2 'layer' and V1 'layers' fields")
    if not v2 and not v1:
        raise CaffeFormatError("no layers found")
    return CaffeNet(name=name, version="V2" if v2 else "V1", layers=v2 or v1)


def _load(path: str | Path) -> CaffeNet:
    try:
        return parse_caffemodel(Path(path).read_bytes())
    except CaffeFormatError as err:
        raise CaffeFormatError(
            f"{path}: not a readable Caffe .caffemodel ({err}); check that the download is "
            "complete and that it is a binary model, not a .prototxt"
        ) from None


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """The layers of a .caffemodel (V2 or legacy V1), blobs as float32/float64 arrays."""
    return _load(path).layers


@dataclass
class StateDictReport:
    """What ``caffe_to_state_dict`` made of each layer."""

    keys: dict[str, list[str]] = field(default_factory=dict)  # Caffe layer -> state dict keys
    skipped: list[str] = field(default_factory=list)  # no blobs, or renamed to None
    ignored_blobs: list[str] = field(default_factory=list)  # blobs with no known meaning

    def __str__(self) -> str:
        return (
            f"{len(self.keys)} layers converted, {len(self.skipped)} skipped, "
            f"{len(self.ignored_blobs)} blobs ignored"
        )


Rename = Mapping[str, str | None] | Callable[[str], str | None] | None


def _module_name(caffe_name: str, rename: Rename) -> str | None:
    """The fcnseg module name of a Caffe layer: '/' becomes '.' (inception_3a/1x1)."""
    if callable(rename):
        return rename(caffe_name)
    if rename is not None and caffe_name in rename:
        return rename[caffe_name]
    return caffe_name.replace("/", ".")


def _vector(blob: np.ndarray) -> np.ndarray:
    """Drop the leading 1s of a legacy 4-D blob that holds a vector (1 x 1 x 1 x n -> n)."""
    return blob.reshape(-1) if blob.ndim > 1 and math.prod(blob.shape[:-1]) == 1 else blob


def _batchnorm(blobs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Caffe BatchNorm keeps running sums: mean and variance divided by a scale factor."""
    factor = float(blobs[2].reshape(-1)[0]) if len(blobs) > 2 and blobs[2].size else 1.0
    scale = 0.0 if factor == 0 else 1.0 / factor
    return {"running_mean": _vector(blobs[0]) * scale, "running_var": _vector(blobs[1]) * scale}


def _layer_params(layer: CaffeLayer) -> tuple[dict[str, np.ndarray], int]:
    """Parameter name -> array for one layer, and how many blobs were used."""
    blobs = layer.blobs
    if layer.type == "BatchNorm" and len(blobs) >= 2:
        return _batchnorm(blobs), min(len(blobs), 3)
    weight = blobs[0]
    if layer.type in ("Scale", "Bias", "PReLU"):
        weight = _vector(weight)
    elif layer.type == "InnerProduct" and weight.ndim == 4 and weight.shape[:2] == (1, 1):
        weight = weight.reshape(weight.shape[2:])  # legacy 1 x 1 x out x in
    params = {"bias" if layer.type == "Bias" else "weight": weight}
    if len(blobs) > 1 and layer.type != "Bias":
        params["bias"] = _vector(blobs[1])
    return params, min(len(blobs), 2)


def caffe_to_state_dict(
    layers: list[CaffeLayer], *, rename: Rename = None
) -> tuple[dict[str, torch.Tensor], StateDictReport]:
    """A state dict keyed ``<module>.weight`` / ``<module>.bias`` by Caffe layer name.

    Blob 0 is the weight and blob 1 the bias (Convolution, Deconvolution, InnerProduct,
    Scale); a BatchNorm's mean and variance are divided by its scale factor. Shapes stay
    Caffe's, which are PyTorch's for convolutions and deconvolutions; InnerProduct
    weights stay out x in, for ``transplant`` to reshape into fc6 / fc7 convolutions.
    ``rename`` maps a Caffe layer name to a module name (a mapping, or a function; None
    skips the layer); by default '/' becomes '.'.
    """
    state: dict[str, torch.Tensor] = {}
    report = StateDictReport()
    for layer in layers:
        module = _module_name(layer.name, rename) if layer.blobs else None
        if module is None:
            report.skipped.append(layer.name)
            continue
        if layer.name in report.keys:
            raise ValueError(f"two layers named {layer.name!r} hold blobs; rename one")
        params, used = _layer_params(layer)
        report.keys[layer.name] = [f"{module}.{param}" for param in params]
        report.ignored_blobs += [f"{layer.name}[{i}]" for i in range(used, len(layer.blobs))]
        for param, array in params.items():
            state[f"{module}.{param}"] = torch.from_numpy(np.ascontiguousarray(array))
    return state, report


def _place(key: str, targets: set[str]) -> str:
    """The model key for ``key``: itself, else under ``backbone.``, else under ``head.``."""
    for prefix in ("", "backbone.", "head."):
        if prefix + key in targets:
            return prefix + key
    return key  # not in the model: transplant reports it dropped


def convert_caffe(
    layers: list[CaffeLayer], model: nn.Module, *, rename: Rename = None
) -> TransplantReport:
    """Copy Caffe weights into ``model`` by layer name, in place.

    An FCN keeps conv1_1 .. fc7 under ``backbone.`` and score_fr, upscore2, score_pool4,
    ... under ``head.``; each Caffe layer is matched to the first of ``<name>``,
    ``backbone.<name>``, ``head.<name>`` the model has. Equal element counts are
    reshaped (fc6 4096 x 25088 into 4096 x 512 x 7 x 7), layers the model lacks (fc8 in
    an FCN) are dropped, and any other shape mismatch raises naming the key.
    """
    state, _ = caffe_to_state_dict(layers, rename=rename)
    targets = set(model.state_dict())
    return transplant(model, {_place(key, targets): value for key, value in state.items()})


def _shape_text(blob: np.ndarray) -> str:
    return "x".join(str(dim) for dim in blob.shape) or "scalar"


def inspect(path: str | Path) -> str:
    """One line per layer: name, type and blob shapes (a .prototxt lists names and types)."""
    if Path(path).suffix == ".prototxt":
        return _inspect_prototxt(path)
    net = _load(path)
    count = sum(blob.size for layer in net.layers for blob in layer.blobs)
    header = f"{path}: {net.name or 'unnamed'} net, {len(net.layers)} layers ({net.version}), "
    lines = [header + f"{count:,} parameters"]
    for layer in net.layers:
        shapes = ", ".join(_shape_text(blob) for blob in layer.blobs)
        lines.append(f"{layer.name:<24} {layer.type:<16} {shapes}".rstrip())
    return "\n".join(lines)


def _inspect_prototxt(path: str | Path) -> str:
    net = read_prototxt(path)
    layers = repeated(net, "layer") or repeated(net, "layers")
    lines = [f"{path}: {net.get('name', 'unnamed')} net, {len(layers)} layers (prototxt)"]
    for layer in layers:
        if not isinstance(layer, dict):
            raise CaffeFormatError(f"{path}: a 'layer' entry is {layer!r}, not a {{...}} message")
        kind = str(layer.get("type", ""))
        lines.append(f"{layer.get('name', '')!s:<24} {_V1_BY_NAME.get(kind, kind)}".rstrip())
    return "\n".join(lines)
