"""The one contract every registered model keeps (issue 12), whatever its kind: plain FCNs
of every backbone, FCN-8s at-once, NYUDv2's HHA, RGB-D (early fusion) and RGB-HHA (late
fusion) nets, and SIFT Flow's two-headed nets.

For each model of ``fcnseg.list_models()``: every task's output has the input's size at
odd sizes, backward reaches every input's stem and every head, the training checkpoint,
the .pt and the .safetensors file rebuild a model with identical outputs, and a
``Segmenter`` predicts whole and tiled. ONNX export runs in onnxruntime with PyTorch's
outputs for every kind of model.

What runs on a stand-in, and why (the file must stay within about 3 minutes on 2 cores):

- The VGG16 nets (134M parameters, 268M for RGB-HHA) run forward and backward
  themselves, at one small size. Their other checks (odd sizes, files of 0.5-1 GB each,
  Segmenter) use a twin: the same spec (inputs, tasks, fusion, variant, geometry, skip
  scales, normalisations) on a VGG16 with a few channels (``slim_models.SLIM``): the same
  modules and state dict keys, the same crops.
- ONNX export takes 5-20 s per model here, whatever its width (the exporter traces
  symbolic sizes, per layer), so it runs once per kind of model: geometry, the inputs'
  channels, fusion, tasks and skip scales, at the kind's finest variant (FCN-8s's path
  holds FCN-16s's and FCN-32s's steps), on ``slim_models.TINY``: VGG16's geometry (pad
  100, ceil-mode pools, fc6 7x7) with one convolution per block.
  tests/test_export_onnx.py exports FCN-8s on ResNet-18 and on VGG16's 13 layers. The
  AlexNet, GoogLeNet and EfficientNet-Lite layers are not exported in the tests.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from functools import partial

import numpy as np
import pytest
import torch
from slim_models import (
    SLIM,
    TINY,
    TinyVGG,
    first_convolution,
    model_inputs,
    randomise_scores,
    raw_images,
    slim_vgg16,
)
from torch import nn

import fcnseg
from fcnseg import modelfile
from fcnseg.inference import Segmenter
from fcnseg.models import ModelSpec, registered_spec
from fcnseg.models.backbones import BACKBONES, GEOMETRIES
from fcnseg.models.spec import VARIANTS
from fcnseg.tiling import Tiling, sliding_window

MODELS = fcnseg.list_models()
CLASSES = 3  # for the models that leave the class count open
SIZES = ((45, 61), (1, 1), (32, 17))  # odd, tiny and unlike any stride
HEAVY_SIZE = (9, 13)  # the VGG16 nets: one small size (pad 100 makes it 207 x 211 inside)
TILING = Tiling.of((48, 40), overlap=(16, 10))  # 45 x 61 in two overlapping tiles

pytestmark = pytest.mark.usefixtures("one_thread")


def _heavy(name: str) -> bool:
    return registered_spec(name).backbone == "vgg16"


@pytest.fixture(scope="module", autouse=True)
def slim_backbone():
    """The slim and tiny VGG16s registered; and no fsync: the files here (up to 250 MB, AlexNet's)
    are read back at once, and flushing them to the disk would take most of the file's
    time (tests/test_modelfile.py checks that writes are fsynced)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES, SLIM, slim_vgg16)
        patch.setitem(BACKBONES, TINY, TinyVGG)
        patch.setattr(os, "fsync", lambda handle: None)
        yield


@dataclasses.dataclass
class Case:
    name: str
    model: fcnseg.FCN  # the registered model itself
    twin: fcnseg.FCN  # what is saved, loaded and predicted with: the model, or its slim twin


# The models whose checks here take longest (AlexNet's 250 MB files, ResNet-101, the two
# VGG16 streams of late fusion): the daily loop (-m "not slow") checks their families and
# fusions on the lighter members.
SLOW_MODELS = {name for name in MODELS if "alexnet" in name or "resnet101" in name
               or name.endswith("_late")}  # fmt: skip


@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=pytest.mark.slow) if name in SLOW_MODELS else name
            for name in MODELS],
)  # fmt: skip
def case(request) -> Case:
    name = request.param
    torch.manual_seed(0)
    classes = {} if registered_spec(name).tasks else {"num_classes": CLASSES}
    model = randomise_scores(fcnseg.build_model(name, **classes))
    twin = model
    if _heavy(name):
        spec = dataclasses.replace(model.spec.architecture(), backbone=SLIM, name=None)
        twin = randomise_scores(fcnseg.build_model(spec), seed=1)
    return Case(name, model, twin)


def _shapes(spec: ModelSpec, batch: int, size: tuple[int, int]) -> dict[str, tuple]:
    return {task.name: (batch, task.classes, *size) for task in spec.tasks}


# ----------------------------------------------------------------------------- any size


def test_every_task_has_the_input_size(case: Case) -> None:
    spec = case.model.spec
    # (a VGG16 net's own output size is checked in its backward pass, at HEAVY_SIZE)
    runs = [(case.twin, SIZES)]
    with torch.no_grad():
        for model, sizes in runs:
            for size in sizes:
                out = model.eval()(model_inputs(model.spec, 1, *size), by_task=True)
                assert list(out) == list(spec.task_names), case.name
                assert {t: tuple(s.shape) for t, s in out.items()} == _shapes(spec, 1, size)
                assert all(torch.isfinite(s).all() for s in out.values())
    # the same scores from a dict, a tuple and the inputs stacked in declared order
    model = case.twin.eval()
    inputs = model_inputs(model.spec, 1, 17, 23)
    with torch.no_grad():
        plain = model(inputs)
        if len(spec.tasks) == 1:
            assert isinstance(plain, torch.Tensor)
            plain = {spec.task_names[0]: plain}
        stacked = torch.cat([inputs[name] for name in spec.input_names], dim=1)
        for other in (model(tuple(inputs.values())), model(stacked, by_task=True)):
            other = other if isinstance(other, dict) else {spec.task_names[0]: other}
            for task, scores in plain.items():
                torch.testing.assert_close(other[task], scores, rtol=0, atol=0)


def test_backward_reaches_every_input_and_every_head(case: Case) -> None:
    model, spec = case.model.train(), case.model.spec
    model.zero_grad(set_to_none=True)
    size = HEAVY_SIZE if _heavy(case.name) else (45, 61)
    out = model(model_inputs(spec, 1, *size), by_task=True)
    assert {t: tuple(s.shape) for t, s in out.items()} == _shapes(spec, 1, size)
    sum(scores.square().mean() for scores in out.values()).backward()
    streams = (
        [model.backbone.get_submodule(name) for name in spec.input_names]
        if model.late_fusion
        else [model.backbone]
    )
    for stream in streams:
        grad = first_convolution(stream).weight.grad
        assert grad is not None and grad.abs().sum() > 0, case.name
    if not model.late_fusion and len(spec.inputs) > 1:  # each input's filters learn
        grad = first_convolution(model.backbone).weight.grad
        start = 0
        for item in spec.inputs:
            assert grad[:, start : start + item.channels].abs().sum() > 0, item.name
            start += item.channels
    for task, head in model.task_heads().items():
        scores = [m for n, m in head.named_children() if n.startswith("score_fr")]
        assert scores and all(m.weight.grad.abs().sum() > 0 for m in scores), task
        fixed = [p for p in head.parameters() if not p.requires_grad]
        assert all(p.grad is None for p in fixed), "fixed deconvolutions must not learn"
    model.zero_grad(set_to_none=True)  # free the gradients' memory


# ----------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def files(case: Case, tmp_path_factory):
    """The twin as a training checkpoint, a .pt and a .safetensors file (deleted after
    the model's tests: they are large)."""
    folder = tmp_path_factory.mktemp(case.name)
    twin = case.twin
    names = {t.name: [f"{t.name} {i}" for i in range(t.classes)] for t in twin.spec.tasks}
    palette = {t.name: [(i, 2 * i, 3 * i) for i in range(t.classes)] for t in twin.spec.tasks}
    training = {"epoch": 2, "optimizer": {"momentum": torch.arange(5.0)}, "best_mean_iu": 0.25}
    record = modelfile.record_of(twin, classes=names, palette=palette, training=training)
    paths = {
        "checkpoint": modelfile.write_record(folder / "last.pt", record),
        "pt": fcnseg.save_weights(folder / "model.pt", twin, classes=names, palette=palette),
        "safetensors": fcnseg.save_weights(
            folder / "model.safetensors", twin, classes=names, palette=palette
        ),
    }
    yield paths, names, palette
    for path in paths.values():
        path.unlink()


def _scores(model: fcnseg.FCN, inputs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(inputs, by_task=True)


@pytest.mark.parametrize("kind", ["checkpoint", "pt", "safetensors"])
def test_files_round_trip_to_identical_outputs(case: Case, files, kind: str) -> None:
    paths, names, palette = files
    twin = case.twin
    inputs = model_inputs(twin.spec, 1, 45, 61)
    expected = _scores(twin, inputs)
    record = modelfile.read_record(paths[kind])
    assert record.spec == twin.spec and record.spec.to_dict() == twin.spec.to_dict()
    assert record.classes == {task: tuple(n) for task, n in names.items()}
    assert record.palette == palette
    if kind == "checkpoint":
        assert record.training["epoch"] == 2
        assert torch.equal(record.training["optimizer"]["momentum"], torch.arange(5.0))
    else:
        assert record.training is None
    # fcnseg.load_weights(path) is read_record(path).build(): one of them per file
    loaded = fcnseg.load_weights(paths[kind]) if kind == "pt" else record.build()
    assert loaded.spec == twin.spec
    got = _scores(loaded, inputs)
    assert list(got) == list(expected)
    for task, scores in expected.items():
        torch.testing.assert_close(got[task], scores, rtol=0, atol=0)


# ----------------------------------------------------------------------------- Segmenter


def test_segmenter_predicts_whole_and_tiled(case: Case, files) -> None:
    paths, names, _ = files
    twin, spec = case.twin.eval(), case.twin.spec
    images = raw_images(spec, 45, 61)
    single = images[spec.input_names[0]] if len(spec.inputs) == 1 else images
    whole = Segmenter.from_checkpoint(paths["pt"])
    named = {task: tuple(n) for task, n in names.items()}
    assert whole.classes == (named if len(spec.tasks) > 1 else named[spec.task_names[0]])

    batch = whole.batch(single)
    assert list(batch) == list(spec.input_names)
    with torch.no_grad():
        expected = twin(batch, by_task=True)
        expected_tiled = sliding_window(partial(twin, by_task=True), batch, TILING)
    for tiling, reference in ((None, expected), (TILING, expected_tiled)):
        whole.tiling = tiling  # one model read for both (tests/test_tiling.py: from_checkpoint)
        labels, probs = whole.predict(single, probabilities=True)
        if len(spec.tasks) == 1:
            labels, probs = {spec.task_names[0]: labels}, {spec.task_names[0]: probs}
        assert list(labels) == list(spec.task_names)
        for task, scores in reference.items():
            assert labels[task].shape == (45, 61) and labels[task].dtype == np.uint8
            # batch norms folded, channels-last: equal up to rounding
            softmax = scores[0].softmax(0).numpy()
            np.testing.assert_allclose(probs[task], softmax, rtol=1e-4, atol=1e-5)
            assert (labels[task] < scores.shape[1]).all()
    # several images: a list, batched internally, each as predicted alone
    _, alone = whole.predict(single, probabilities=True)
    alone = alone if isinstance(alone, dict) else {"": alone}
    many = whole.predict([single, single], probabilities=True)
    assert isinstance(many, list) and len(many) == 2
    for _, probs in many:
        probs = probs if isinstance(probs, dict) else {"": probs}
        for task, expected_probs in alone.items():
            np.testing.assert_allclose(probs[task], expected_probs, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- ONNX


def _default_geometry(backbone: str) -> str:
    return inspect.signature(BACKBONES[backbone]).parameters["geometry"].default


def _onnx_kinds() -> dict[str, tuple[dict, list[str]]]:
    """The kinds of registered models, as an ONNX graph sees them: geometry, the inputs'
    channels, fusion, tasks and skip scales (an input's name and normalisation change no
    operation: the HHA nets are plain nets to the exporter; the RGB-D and RGB-HHA kinds
    check the input names); each at its finest variant, with the models it covers."""
    kinds: dict[str, tuple[dict, list[str]]] = {}
    for name in MODELS:
        spec = registered_spec(name)
        geometry = spec.geometry or _default_geometry(spec.backbone)
        tasks = spec.task_classes or {"semantic": CLASSES}
        fields = {
            "geometry": geometry,
            "inputs": spec.inputs,
            "tasks": tasks,
            "fusion": spec.fusion,
            "skip_scales": spec.skip_scales,
        }
        key = "-".join(
            [geometry, "+".join(str(i.channels) for i in spec.inputs), spec.fusion]
            + ["+".join(tasks)]
            + (["atonce"] if spec.skip_scales else [])
        )
        known, covered = kinds.setdefault(key, (dict(fields, variant="32s"), []))
        if list(VARIANTS).index(spec.variant) > list(VARIANTS).index(known["variant"]):
            known["variant"] = spec.variant
        covered.append(name)
    return kinds


ONNX_KINDS = _onnx_kinds()


def test_every_model_has_an_onnx_kind() -> None:
    covered = sorted(name for _, names in ONNX_KINDS.values() for name in names)
    assert covered == MODELS
    # plain (caffe and aligned; HHA), at-once, RGB-D, RGB-HHA, SIFT Flow
    assert len(ONNX_KINDS) == 6, sorted(ONNX_KINDS)


@pytest.mark.slow
@pytest.mark.onnx
@pytest.mark.parametrize("kind", sorted(ONNX_KINDS))
def test_onnx_export_matches_pytorch(kind: str, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fcnseg.export import check_onnx, export_onnx, load_onnx

    fields, covered = ONNX_KINDS[kind]
    torch.manual_seed(0)
    model = randomise_scores(fcnseg.build_model(ModelSpec(TINY, **fields)), seed=2)
    path = export_onnx(model, tmp_path / f"{kind}.onnx", example_size=(64, 64))
    runner = load_onnx(path)
    assert runner.input_names == list(model.spec.input_names), covered
    if fields["fusion"] == "late":  # once reported 3 channels of one input (issue 12)
        assert runner.input_names == ["color", "hha"]
        assert runner.spec.input_channels == {"color": 3, "hha": 3}
    assert runner.output_names == list(model.spec.task_names)
    assert runner.spec == model.spec
    for check in check_onnx(model, path, sizes=((45, 61), (33, 50)), batch=1):
        assert check.max_abs_logit > 1e-3  # the scores are not trivially zero
        assert check.max_abs_diff < 1e-4 * max(1.0, check.max_abs_logit), (kind, check)
    images = raw_images(model.spec, 45, 61)
    single = images if len(model.spec.inputs) > 1 else images[model.spec.input_names[0]]
    whole = Segmenter.from_onnx(path).predict(single)
    tiled = Segmenter.from_onnx(path, tiling=TILING).predict(single)
    for labels in (whole, tiled):
        labels = labels if isinstance(labels, dict) else {"": labels}
        assert all(map_.shape == (45, 61) for map_ in labels.values())


# ----------------------------------------------------------------------------- the registry


def test_registry_names_the_paper_nets() -> None:
    for name in ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_atonce_vgg16"):
        assert name in MODELS
    for variant in VARIANTS:
        assert f"fcn{variant}_vgg16_siftflow" in MODELS  # Table 5
    for name in ("hha", "rgbd", "rgbhha_late"):  # Table 4
        assert {f"fcn32s_vgg16_{name}", f"fcn16s_vgg16_{name}"} <= set(MODELS)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean fcn8s_vgg16"):
        fcnseg.build_model("fcn8s_vgg", num_classes=21)


def test_parameter_names_keep_the_paper_layer_names() -> None:
    with torch.device("meta"):
        keys = fcnseg.build_model("fcn8s_vgg16", num_classes=21).state_dict().keys()
        atonce = fcnseg.build_model("fcn8s_atonce_vgg16", num_classes=21).head
    for key in (
        "backbone.conv1_1.weight",
        "backbone.fc6.weight",
        "backbone.fc7.bias",
        "head.score_fr.weight",
        "head.upscore2.weight",
        "head.score_pool4.weight",
        "head.upscore_pool4.weight",
        "head.score_pool3.bias",
        "head.upscore8.weight",
    ):
        assert key in keys
    assert isinstance(atonce.scale_pool4.weight, nn.Parameter)
    real = fcnseg.build_model("fcn8s_atonce_vgg16", num_classes=2).head
    assert real.scale_pool4.weight.unique().tolist() == [pytest.approx(0.01)]
    assert real.scale_pool3.weight.unique().tolist() == [pytest.approx(0.0001)]
    for name in ("score_fr", "score_pool4", "score_pool3"):  # score layers start at zero
        layer = getattr(real, name)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0


def test_bilinear_upsampling_mode_and_learnable_deconvolution() -> None:
    spec = ModelSpec(SLIM, "8s", tasks={"semantic": 3}, upsample="bilinear")
    bilinear = randomise_scores(fcnseg.build_model(spec))
    assert not any("upscore" in key for key in bilinear.state_dict())
    assert bilinear.eval()(torch.randn(1, 3, 41, 53)).shape == (1, 3, 41, 53)
    with torch.device("meta"):
        learnable = fcnseg.build_model("fcn8s_vgg16", num_classes=3, learnable_upsample=True)
    assert learnable.head.upscore8.weight.requires_grad


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_feature_taps_match_the_declaration(name, geometry) -> None:
    backbone = BACKBONES[name](geometry=geometry).eval()
    height, width = 97, 131
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, height, width))
    assert list(features) == [tap.name for tap in backbone.taps]
    for tap in backbone.taps:
        feature = features[tap.name]
        assert feature.shape[1] == tap.channels, f"{name}.{tap.name} channels"
        assert backbone.coord_map(tap.name).scale == tap.stride, f"{name}.{tap.name} stride"
        if geometry == "aligned":  # about one cell per stride: no giant zero border
            cells = torch.tensor(feature.shape[-2:], dtype=torch.float64)
            ideal = torch.tensor([height / tap.stride, width / tap.stride], dtype=torch.float64)
            assert (cells - ideal).abs().max() <= 1, f"{name}.{tap.name} size"
