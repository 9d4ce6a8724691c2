"""The Caffe reader on .caffemodel bytes written here, by a small independent encoder.

The encoder below writes the protobuf wire format by hand (varint tags, lengths, packed
and unpacked floats) with the field numbers of BVLC Caffe's caffe.proto, so a reader
bug cannot cancel out against the same bug in a shared helper.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fcnseg.weights import (
    CaffeFormatError,
    CaffeLayer,
    PrototxtError,
    caffe_to_state_dict,
    convert_caffe,
    inspect,
    parse_caffemodel,
    parse_prototxt,
    read_caffemodel,
    read_prototxt,
    repeated,
)

# ----------------------------------------------------------------------------- encoder


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as its 10-byte two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def int_field(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def bytes_field(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def str_field(number: int, text: str) -> bytes:
    return bytes_field(number, text.encode())


def floats_field(number: int, values: np.ndarray, *, packed: bool = True) -> bytes:
    flat = [float(v) for v in values.reshape(-1)]
    if packed:
        return bytes_field(number, struct.pack(f"<{len(flat)}f", *flat))
    return b"".join(tag(number, 5) + struct.pack("<f", v) for v in flat)


def blob(
    array: np.ndarray, legacy: bool = False, *, packed: bool = True, double: bool = False
) -> bytes:
    """A BlobProto: shape 7 (BlobShape dim 1), data 5, double_data 8, num..width 1-4."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(int_field(n, dim) for n, dim in zip((1, 2, 3, 4), dims, strict=True))
    else:
        head = bytes_field(7, bytes_field(1, b"".join(varint(d) for d in array.shape)))
    if double:
        flat = [float(v) for v in array.reshape(-1)]
        return head + bytes_field(8, struct.pack(f"<{len(flat)}d", *flat))
    return head + floats_field(5, array, packed=packed)


def layer_v2(name: str, kind: str, blobs: list[bytes], bottom: str = "", top: str = "") -> bytes:
    """LayerParameter: name 1, type 2, bottom 3, top 4, blobs 7 (+ a ParamSpec, field 6)."""
    body = str_field(1, name) + str_field(2, kind)
    body += str_field(3, bottom) if bottom else b""
    body += str_field(4, top) if top else b""
    body += bytes_field(6, b"\x1d" + struct.pack("<f", 1.0))  # param { lr_mult: 1 }: skipped
    return body + b"".join(bytes_field(7, b) for b in blobs)


def layer_v1(name: str, kind: int, blobs: list[bytes]) -> bytes:
    """V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum), blobs 6."""
    body = str_field(2, "data") + str_field(3, name) + str_field(4, name) + int_field(5, kind)
    return body + b"".join(bytes_field(6, b) for b in blobs)


def net_v2(layers: list[bytes], name: str = "tiny") -> bytes:
    return str_field(1, name) + b"".join(bytes_field(100, lay) for lay in layers)


def net_v1(layers: list[bytes]) -> bytes:
    return str_field(1, "legacy") + b"".join(bytes_field(2, lay) for lay in layers)


CONVOLUTION, INNER_PRODUCT, DECONVOLUTION, RELU = 4, 14, 39, 18  # V1LayerParameter.LayerType

RNG = np.random.default_rng(0)
W_CONV = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B_CONV = RNG.standard_normal(4).astype(np.float32)
W_FC = RNG.standard_normal((5, 16)).astype(np.float32)  # a Linear over 4 x 2 x 2 features
B_FC = RNG.standard_normal(5).astype(np.float32)
W_UP = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)


def v2_bytes() -> bytes:
    return net_v2(
        [
            layer_v2("data", "Input", [], top="data"),
            layer_v2("conv1_1", "Convolution", [blob(W_CONV), blob(B_CONV)], "data", "conv1_1"),
            layer_v2("relu1_1", "ReLU", [], "conv1_1", "conv1_1"),
            layer_v2("fc6", "InnerProduct", [blob(W_FC, packed=False), blob(B_FC)]),
            layer_v2("upscore2", "Deconvolution", [blob(W_UP, double=True)]),
        ]
    )


def v1_bytes() -> bytes:
    return net_v1(
        [
            layer_v1(
                "conv1_1", CONVOLUTION, [blob(W_CONV, legacy=True), blob(B_CONV, legacy=True)]
            ),
            layer_v1("relu1_1", RELU, []),
            layer_v1("fc6", INNER_PRODUCT, [blob(W_FC, legacy=True), blob(B_FC, legacy=True)]),
            layer_v1("upscore2", DECONVOLUTION, [blob(W_UP, legacy=True, packed=False)]),
        ]
    )


# ----------------------------------------------------------------------------- reading


def test_v2_round_trip() -> None:
    net = parse_caffemodel(v2_bytes())
    assert (net.name, net.version) == ("tiny", "V2")
    assert [(lay.name, lay.type) for lay in net.layers] == [
        ("data", "Input"),
        ("conv1_1", "Convolution"),
        ("relu1_1", "ReLU"),
        ("fc6", "InnerProduct"),
        ("upscore2", "Deconvolution"),
    ]
    conv = net.layers[1]
    assert (conv.bottom, conv.top) == (["data"], ["conv1_1"])
    np.testing.assert_array_equal(conv.blobs[0], W_CONV)
    np.testing.assert_array_equal(conv.blobs[1], B_CONV)
    np.testing.assert_array_equal(net.layers[3].blobs[0], W_FC)  # unpacked floats
    assert net.layers[4].blobs[0].dtype == np.float64  # double_data kept in double
    np.testing.assert_array_equal(net.layers[4].blobs[0], W_UP.astype(np.float64))


def test_v1_legacy_dims_and_enum_types() -> None:
    net = parse_caffemodel(v1_bytes())
    assert net.version == "V1"
    types = {lay.name: lay.type for lay in net.layers}
    assert types == {
        "conv1_1": "Convolution",
        "relu1_1": "ReLU",
        "fc6": "InnerProduct",
        "upscore2": "Deconvolution",
    }
    conv, _, fc6, up = net.layers
    np.testing.assert_array_equal(conv.blobs[0], W_CONV)
    assert conv.blobs[1].shape == (1, 1, 1, 4)  # legacy bias: 1 x 1 x 1 x n, as stored
    assert fc6.blobs[0].shape == (1, 1, 5, 16)
    np.testing.assert_array_equal(fc6.blobs[0].reshape(5, 16), W_FC)
    np.testing.assert_array_equal(up.blobs[0], W_UP)


def test_field_order_unknown_fields_and_split_repeated_data() -> None:
    """Protobuf allows any field order, unknown fields, and a repeated field in pieces."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    pieces = floats_field(5, values[0]) + floats_field(5, values[1], packed=False)
    shape = bytes_field(7, int_field(1, 2) + int_field(1, 3))  # dims written unpacked
    diff = floats_field(6, np.ones(6, dtype=np.float32))  # gradients: skipped
    body = pieces + int_field(99, 7) + diff + shape
    layer = bytes_field(7, body) + str_field(2, "Scale") + str_field(1, "scale_pool4")
    unknown = tag(5, 1) + struct.pack("<d", 1.0) + tag(6, 5) + b"\0\0\0\0"
    (lay,) = parse_caffemodel(unknown + bytes_field(100, layer)).layers
    assert (lay.name, lay.type) == ("scale_pool4", "Scale")
    np.testing.assert_array_equal(lay.blobs[0], values)


def test_v0_layer_inside_v1() -> None:
    """Files upgraded from V0 keep name (1), type (2) and blobs (50) in V1 field 1."""
    v0 = str_field(1, "conv1") + str_field(2, "conv") + bytes_field(50, blob(B_CONV))
    (lay,) = parse_caffemodel(net_v1([bytes_field(1, v0)])).layers
    assert (lay.name, lay.type) == ("conv1", "conv")
    np.testing.assert_array_equal(lay.blobs[0], B_CONV)


HUGE_DIMS = varint(0) + varint(1 << 40)  # an empty blob, yet over Caffe's 2^31 count


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no layers"),
        (net_v2([layer_v2("a", "ReLU", [])]) + bytes_field(2, layer_v1("b", RELU, [])), "both"),
        (net_v2([layer_v2("c", "Scale", [bytes_field(7, bytes_field(1, varint(3)))])]), "3"),
        (net_v2([layer_v2("c", "Scale", [bytes_field(7, bytes_field(1, varint(-2)))])]), "shape"),
        (
            net_v2([layer_v2("c", "Scale", [bytes_field(7, bytes_field(1, HUGE_DIMS))])]),
            "large",
        ),
        (tag(100, 2) + varint(1 << 60) + b"\0" * 8, "claims"),
        (tag(100, 2) + b"\xff" * 11, "varint"),
        (tag(100, 3), "wire type"),
        (tag(100, 0) + varint(5), "wire type"),
        (bytes_field(100, bytes_field(7, tag(5, 2) + varint(3) + b"abc")), "multiple of 4"),
    ],
)
def test_malformed_input_raises_one_error(data: bytes, message: str) -> None:
    with pytest.raises(CaffeFormatError, match=message):
        parse_caffemodel(data)


def test_huge_claims_are_rejected_before_allocating() -> None:
    """A 2^60 length, or a 2^30 x 2^30 shape with no data, must not allocate anything big."""
    claims = [
        tag(100, 2) + varint(1 << 60) + b"x" * 16,
        net_v2([layer_v2("x", "Scale", [bytes_field(7, bytes_field(1, varint(1 << 30) * 2))])]),
        bytes_field(100, bytes_field(7, tag(5, 2) + varint((1 << 62) - 4))),
    ]
    tracemalloc.start()
    try:
        for data in claims:
            with pytest.raises(CaffeFormatError):
                parse_caffemodel(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_read_caffemodel_names_the_file(tmp_path) -> None:
    good = tmp_path / "net.caffemodel"
    good.write_bytes(v2_bytes())
    assert [lay.name for lay in read_caffemodel(good)][:2] == ["data", "conv1_1"]
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(v2_bytes()[:-7])
    with pytest.raises(CaffeFormatError, match=r"cut\.caffemodel.*download is complete"):
        read_caffemodel(bad)


def test_inspect_lists_layers_types_and_shapes(tmp_path) -> None:
    path = tmp_path / "fcn.caffemodel"
    path.write_bytes(v1_bytes())
    lines = inspect(path).splitlines()
    assert "4 layers (V1)" in lines[0] and f"{W_CONV.size + 4 + 80 + 5 + 144:,}" in lines[0]
    assert lines[1].split() == ["conv1_1", "Convolution", "4x3x3x3,", "1x1x1x4"]
    assert lines[2].split() == ["relu1_1", "ReLU"]
    assert lines[3].split() == ["fc6", "InnerProduct", "1x1x5x16,", "1x1x1x5"]


# ----------------------------------------------------------------------------- prototxt

FCN_PROTOTXT = r"""
# FCN-32s, a slice of the reference net definition
name: "voc-fcn32s"
input: "data"
input_shape { dim: 1 dim: 3 dim: 500 dim: 500 }
layer {
  name: "conv1_1"
  type: "Convolution"
  bottom: "data"
  top: "conv1_1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 64 pad: 100 kernel_size: 3 }
}
layer { name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }
layer {
  name: "pool1"; type: "Pooling"; bottom: "conv1_1"; top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore"
  param { lr_mult: 0 }
  convolution_param { num_output: 21 bias_term: false kernel_size: 64 stride: 32 }
}
layer {
  name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: false }
  include < phase: TRAIN >
}
layer { name: "drop6" type: "Dropout" dropout_param { dropout_ratio: 0.5 } }
layer { name: "x" type: 'Py' python_param { param_str: "{\'a\': 1}\n" "tail" } }
layer { name: "f" type: "Scale" scale_param { filler { value: 1e-2 } bias: -inf } }
"""


def test_prototxt_parses_an_fcn_definition() -> None:
    net = parse_prototxt(FCN_PROTOTXT)
    assert net["name"] == "voc-fcn32s" and net["input"] == "data"
    assert net["input_shape"]["dim"] == [1, 3, 500, 500]
    layers = repeated(net, "layer")
    assert [lay["name"] for lay in layers][:3] == ["conv1_1", "relu1_1", "pool1"]
    conv = layers[0]
    assert conv["convolution_param"] == {"num_output": 64, "pad": 100, "kernel_size": 3}
    assert conv["param"] == [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]
    assert layers[2]["pooling_param"]["pool"] == "MAX"
    assert layers[3]["convolution_param"]["bias_term"] is False
    assert repeated(layers[3], "param") == [{"lr_mult": 0}]
    assert layers[4]["bottom"] == ["score", "label"] and layers[4]["include"] == {"phase": "TRAIN"}
    assert layers[5]["dropout_param"]["dropout_ratio"] == 0.5
    assert layers[6]["python_param"]["param_str"] == "{'a': 1}\ntail"
    assert layers[7]["scale_param"]["filler"]["value"] == pytest.approx(0.01)
    assert layers[7]["scale_param"]["bias"] == float("-inf")
    assert repeated(net, "absent") == []


def test_prototxt_lists_and_v1_enums(tmp_path) -> None:
    text = 'layers { name: "fc6" type: INNER_PRODUCT blobs_lr: [1, 2] }\nshape { dim: [1, 3] }'
    path = tmp_path / "deploy.prototxt"
    path.write_text(text)
    net = read_prototxt(path)
    assert net["layers"]["blobs_lr"] == [1, 2] and net["shape"]["dim"] == [1, 3]
    assert inspect(path).splitlines()[1].split() == ["fc6", "InnerProduct"]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('layer {\n  name: "a"\n  type: "B"\n', 4),  # unclosed message
        ('layer {\n  name "a"\n}', 2),  # missing ':'
        ("a: 1\nb: 2\nc: @\n", 3),  # stray character
        ("a: 1\n}\n", 2),  # unbalanced brace
        ("a: [1, 2\n", 2),
        ("x:\n", 2),
    ],
)
def test_prototxt_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(PrototxtError, match=rf"<prototxt>:{line}: "):
        parse_prototxt(text)


def test_prototxt_nesting_is_bounded() -> None:
    with pytest.raises(PrototxtError, match="nested"):
        parse_prototxt("a {" * 5000 + "}" * 5000)


def test_read_prototxt_rejects_binary(tmp_path) -> None:
    path = tmp_path / "model.prototxt"
    path.write_bytes(v2_bytes())
    with pytest.raises(PrototxtError, match="model.prototxt: not UTF-8"):
        read_prototxt(path)


# ----------------------------------------------------------------------------- conversion


class Scale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))


class TinyFCN(nn.Module):
    """conv1_1 .. fc6 under backbone., score_fr / upscore2 / scale_pool4 under head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv1_1 = nn.Conv2d(3, 4, 3)
        self.backbone.fc6 = nn.Conv2d(4, 5, 2)  # the 2x2 window the Linear fc6 reads
        self.head = nn.Module()
        self.head.score_fr = nn.Conv2d(5, 3, 1)
        self.head.upscore2 = nn.ConvTranspose2d(3, 3, 4, stride=2, bias=False)
        self.head.scale_pool4 = Scale(4)


def fcn_layers(*, legacy: bool) -> list[CaffeLayer]:
    score = RNG.standard_normal((3, 5, 1, 1)).astype(np.float32)
    scale = np.full(4, 0.01, dtype=np.float32)
    data = net_v2(
        [
            layer_v2(
                "conv1_1", "Convolution", [blob(W_CONV, legacy=legacy), blob(B_CONV, legacy=legacy)]
            ),
            layer_v2("relu1_1", "ReLU", []),
            layer_v2("fc6", "InnerProduct", [blob(W_FC, legacy=legacy), blob(B_FC, legacy=legacy)]),
            layer_v2("score_fr", "Convolution", [blob(score), blob(np.zeros(3, np.float32))]),
            layer_v2("upscore2", "Deconvolution", [blob(W_UP)]),
            layer_v2("scale_pool4", "Scale", [blob(scale, legacy=legacy)]),
            layer_v2("fc8", "InnerProduct", [blob(W_FC), blob(B_FC)]),
        ]
    )
    return parse_caffemodel(data).layers


@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_keys_and_canonical_shapes(legacy: bool) -> None:
    state, report = caffe_to_state_dict(fcn_layers(legacy=legacy))
    assert state["fc6.weight"].shape == (5, 16) and state["fc6.bias"].shape == (5,)
    assert state["conv1_1.bias"].shape == (4,) and state["scale_pool4.weight"].shape == (4,)
    assert "upscore2.bias" not in state
    assert report.skipped == ["relu1_1"]
    assert report.keys["upscore2"] == ["upscore2.weight"]


def test_slashes_rename_and_batchnorm() -> None:
    mean, var = np.array([2.0, 4.0], np.float32), np.array([8.0, 6.0], np.float32)
    layers = [
        CaffeLayer("inception_3a/1x1", "Convolution", [W_CONV, B_CONV]),
        CaffeLayer("bn", "BatchNorm", [mean, var, np.array([2.0], np.float32)]),
        CaffeLayer("loss3/classifier", "InnerProduct", [W_FC, B_FC]),
    ]
    drop_classifier = {"loss3/classifier": None}
    state, report = caffe_to_state_dict(layers, rename=drop_classifier)
    assert set(state) == {"inception_3a.1x1.weight", "inception_3a.1x1.bias"} | {
        "bn.running_mean",
        "bn.running_var",
    }
    np.testing.assert_allclose(state["bn.running_var"].numpy(), [4.0, 3.0])
    assert report.skipped == ["loss3/classifier"]
    with pytest.raises(ValueError, match="two layers named 'bn'"):
        caffe_to_state_dict(layers + [layers[1]])


@pytest.mark.parametrize("legacy", [False, True])
def test_convert_into_fcn_copies_coerces_and_drops(legacy: bool) -> None:
    model = TinyFCN()
    report = convert_caffe(fcn_layers(legacy=legacy), model)
    assert report.coerced == ["backbone.fc6.weight"]
    assert set(report.dropped) == {"fc8.weight", "fc8.bias"}
    assert "head.upscore2.weight" in report.copied and "head.scale_pool4.weight" in report.copied
    assert report.missing == []
    torch.testing.assert_close(model.backbone.conv1_1.weight, torch.from_numpy(W_CONV))
    torch.testing.assert_close(model.head.scale_pool4.weight, torch.full((4,), 0.01))
    # fc6 as a 2x2 convolution computes the Caffe InnerProduct on the flattened window
    x = torch.randn(1, 4, 2, 2)
    linear = x.reshape(1, 16) @ torch.from_numpy(W_FC).T + torch.from_numpy(B_FC)
    torch.testing.assert_close(model.backbone.fc6(x).reshape(1, 5), linear)


def test_convert_shape_mismatch_names_the_key() -> None:
    model = TinyFCN()
    layers = [CaffeLayer("score_fr", "Convolution", [np.zeros((21, 5, 1, 1), np.float32)])]
    with pytest.raises(ValueError, match="head.score_fr.weight"):
        convert_caffe(layers, model)


# ----------------------------------------------------------------------------- fuzzing

SEEDS = [v2_bytes(), v1_bytes(), net_v2([layer_v2("s", "Scale", [blob(B_CONV, legacy=True)])])]


def parses_or_raises(data: bytes) -> None:
    """The reader's whole contract on garbage: a result, or one CaffeFormatError."""
    try:
        net = parse_caffemodel(data)
    except CaffeFormatError:
        return
    assert sum(blob.nbytes for lay in net.layers for blob in lay.blobs) <= 2 * len(data)


FUZZ = settings(
    max_examples=1500,
    deadline=1000,  # ms: a hang would blow far past this
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    parses_or_raises(data)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_layer_payloads(payload: bytes) -> None:
    """Random bytes inside a well-formed layer / blob envelope reach the deeper decoders."""
    parses_or_raises(bytes_field(100, payload))
    parses_or_raises(bytes_field(2, payload))
    parses_or_raises(bytes_field(100, bytes_field(7, payload)))


@settings(FUZZ, max_examples=500)
@given(
    st.lists(st.integers(-3, 1 << 64) | st.sampled_from([0, 1, 2, 3]), max_size=34),
    st.integers(0, 40),
    st.booleans(),
)
def test_fuzz_blob_shapes(dims: list[int], count: int, legacy: bool) -> None:
    """Any claimed shape: a blob of exactly that shape, or the one error, never a crash."""
    dims = [d & ((1 << 64) - 1) for d in dims]  # what the varints carry
    if legacy:
        head = b"".join(int_field(n, d) for n, d in zip((1, 2, 3, 4), dims, strict=False))
        expected = tuple(dims[:4]) + (0,) * (4 - len(dims)) if dims else ()
    else:
        head = bytes_field(7, bytes_field(1, b"".join(varint(d) for d in dims)))
        expected = tuple(dims)
    data = head + floats_field(5, np.arange(count, dtype=np.float32))
    try:
        (lay,) = parse_caffemodel(bytes_field(100, bytes_field(7, data))).layers
    except CaffeFormatError:
        return
    assert lay.blobs[0].shape == expected
    np.testing.assert_array_equal(lay.blobs[0].reshape(-1), np.arange(count))


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 12)),
)


def mutate(data: bytes, mutation: tuple) -> bytes:
    kind, where, arg = mutation
    where %= len(data) + 1
    if kind == "flip":
        where = min(where, len(data) - 1)
        return data[:where] + bytes([data[where] ^ (1 << arg)]) + data[where + 1 :]
    if kind == "cut":
        return data[:where]
    if kind == "insert":
        return data[:where] + arg + data[where:]
    return data[:where] + data[where + arg :]


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_models(seed: bytes, mutations: list[tuple]) -> None:
    data = seed
    for mutation in mutations:
        data = mutate(data, mutation) if data else data
    tracemalloc.start()
    try:
        parses_or_raises(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data) + (1 << 18)  # linear in the input, never a claimed size


@settings(max_examples=500, deadline=1000, database=None)
@given(st.text(alphabet='ab_:{}<>[],;#"\\\n 0123456789.-e', max_size=80))
def test_fuzz_prototxt(text: str) -> None:
    try:
        parse_prototxt(text)
    except PrototxtError as err:
        assert str(err).startswith("<prototxt>:")
