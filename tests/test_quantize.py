"""int8: the QDQ file keeps the head in fp32, carries the record, runs on both ONNX engines
and agrees with fp32; ``fcnseg quantize`` writes it with a report; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from slim_models import TINY, model_inputs, tiny_checkpoint
from test_engines import tiny_backbone  # noqa: F401 (autouse: registers the tiny net)
from test_export_onnx import flip_a_weight_byte, predict_refuses_damaged

import fcnseg
from fcnseg import engines
from fcnseg.cli import main
from fcnseg.export import weights_digest
from fcnseg.inference import Segmenter
from fcnseg.modelfile import record_of
from fcnseg.training import checkpoint as ckpt

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from fcnseg.quantize import (  # noqa: E402
    Agreement,
    _fewest,
    fewest_fp32,
    head_nodes,
    keep_fp32,
    quantize_onnx,
    sensitive_activations,
)

pytestmark = [pytest.mark.onnx, pytest.mark.usefixtures("one_thread")]

# tiny random net on random images: int8 kept 99% of labels when written on a Xeon with
# AMX; OpenVINO's int8 kernels on an AMD EPYC without AMX kept 94.7% (onnxruntime more)
AGREEMENT = 0.9


def _batches(path):
    spec = Segmenter.from_checkpoint(path).spec
    return [{k: v.numpy() for k, v in model_inputs(spec, 1, 64, 80, seed).items()}
            for seed in range(8)]  # fmt: skip


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_vgg_file):
    folder = tmp_path_factory.mktemp("int8")
    path = tiny_vgg_file(classes=7)
    fp32 = engines.cached_onnx(path)
    return path, fp32, quantize_onnx(fp32, folder / "model.int8.onnx", _batches(path))


def _quantized_tensors(path) -> set[str]:
    return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}


def _record(path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["fcnseg.record"])


def _tensors(path, names: list[str], feed) -> list[np.ndarray]:
    """The values of the tensors ``names`` of the ONNX file at ``path`` on ``feed``."""
    model = onnx.load(str(path))
    for name in names:  # made outputs of the graph, to read them
        info = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(info)
    provider = ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=provider)
    return session.run(names, feed)


def test_the_head_stays_fp32_and_the_backbone_is_int8(quantized):
    _, fp32, int8 = quantized
    source = onnx.load(str(fp32))
    head = set(head_nodes(source))
    assert {n.name for n in source.graph.node if n.op_type == "ConvTranspose"} <= head
    assert "node_Conv_0" not in head and len(head) < len(source.graph.node)
    model = onnx.load(str(int8))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = _record(int8)
    assert record["quantization"]["head"] == "fp32" and record["spec"]["backbone"] == TINY


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_int8_agrees_with_fp32(quantized, engine):
    if not engines.installed(engine):
        pytest.skip(f"engine {engine} is not installed")
    path, _, int8 = quantized
    reference = Segmenter.from_checkpoint(path)
    segmenter = Segmenter.from_checkpoint(int8, engine=engine)
    assert segmenter.classes == reference.classes
    agreements = []
    for seed in range(100, 104):  # not the calibration images
        batch = {k: v for k, v in model_inputs(reference.spec, 1, 64, 80, seed).items()}
        expected = reference.scores(batch)["semantic"].argmax(1)
        got = segmenter.scores(batch)["semantic"].argmax(1)
        agreements.append(float((got == expected).float().mean()))
    assert np.mean(agreements) > AGREEMENT, agreements


def test_the_activations_int8_rounds_worst_can_stay_fp32(quantized, tmp_path):
    path, fp32, int8 = quantized
    batches = _batches(path)
    ranked = sensitive_activations(fp32, int8, batches, images=2)
    ratios = [ratio for _, ratio in ranked]
    assert len(ranked) > 3 and ratios == sorted(ratios)  # least faithful first
    assert {name for name, _ in ranked} <= _quantized_tensors(int8)
    keep = [name for name, _ in ranked[:3]]
    mixed = quantize_onnx(fp32, tmp_path / "mixed.onnx", batches, fp32_activations=keep)
    left = _quantized_tensors(mixed)
    assert not set(keep) & left and left  # those three stay fp32, the rest is int8
    assert _record(mixed)["quantization"]["fp32_activations"] == keep


def test_a_kept_activation_is_read_in_fp32_and_keeps_its_relu(quantized, tmp_path):
    """int8 folds each ReLU into the convolution before it (the uint8 range clamps): kept
    fp32, the tensor gets its ReLU back, and its readers read exactly that, unrounded."""
    path, fp32, int8 = quantized
    batches = _batches(path)
    keep = ["image", "relu_1", "max_pool2d_2"]  # an input, a folded ReLU, a pooling
    mixed = quantize_onnx(fp32, tmp_path / "mixed.onnx", batches, fp32_activations=keep)
    assert not set(keep) & _quantized_tensors(mixed)
    graph = onnx.load(str(mixed)).graph
    relu = next(node for node in graph.node if node.op_type == "Relu")
    assert list(relu.input) == ["relu_1"]
    readers = [node.op_type for node in graph.node if relu.output[0] in node.input]
    assert readers == [n.op_type for n in onnx.load(str(fp32)).graph.node if "relu_1" in n.input]
    before, after = _tensors(mixed, ["relu_1", relu.output[0]], batches[0])
    assert before.min() < 0  # the convolution's output: int8 folded the ReLU into it
    assert np.array_equal(after, np.maximum(before, 0))
    assert len(np.unique(after)) > 256  # more values than uint8 has: not rounded
    assert _record(mixed)["quantization"]["fp32_activations"] == keep


def test_a_kept_relu6_output_gets_its_clip_back(tmp_path):
    """EfficientNet-Lite's ReLU6 is a Clip with constant bounds, which int8 folds into the
    convolution before it: kept fp32, the Clip and its bounds come back."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU6(), torch.nn.Conv2d(8, 4, 1))
    net.eval()
    fp32 = tmp_path / "relu6.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(fp32), input_names=["image"],
                      dynamo=True)  # fmt: skip
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(0, 10, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    source = onnx.load(str(fp32))
    clip = next(node for node in source.graph.node if node.op_type == "Clip")
    int8 = quantize_onnx(fp32, tmp_path / "relu6.int8.onnx", batches)
    assert "Clip" not in {node.op_type for node in onnx.load(str(int8)).graph.node}  # folded
    keep_fp32(int8, fp32, [clip.output[0]])
    graph = onnx.load(str(int8)).graph
    restored = next(node for node in graph.node if node.op_type == "Clip")
    assert [n.op_type for n in graph.node if restored.output[0] in n.input] == ["Conv"]
    before, after = _tensors(int8, [restored.input[0], restored.output[0]], batches[0])
    assert before.min() < 0 and before.max() > 6
    assert np.array_equal(after, np.clip(before, 0, 6))
    assert len(np.unique(after)) > 256  # more values than uint8 has: not rounded


def test_each_int8_file_records_the_digest_of_its_own_weights(quantized, tmp_path):
    path, fp32, int8 = quantized
    mixed = quantize_onnx(fp32, tmp_path / "mixed.onnx", _batches(path), fp32_activations=["relu_1"])
    keep_fp32(mixed, fp32, ["max_pool2d_2"])  # edited again: digested again
    digests = [_record(file)["weights_sha256"] for file in (fp32, int8, mixed)]
    assert digests[0] != digests[1]  # not the fp32 file's, carried over with its record
    for file, digest in zip((fp32, int8, mixed), digests, strict=True):
        assert weights_digest(onnx.load(str(file))) == digest
    Segmenter.from_checkpoint(mixed, engine="onnxruntime")  # loads: the digest holds


def test_a_damaged_int8_file_is_one_line_and_nothing_changes(
    quantized, tmp_path, fcnseg_main, one_line_error, file_hashes
):
    _, fp32, int8 = quantized
    damaged = tmp_path / "model.int8.onnx"
    damaged.write_bytes(int8.read_bytes())
    flip_a_weight_byte(damaged)
    before = predict_refuses_damaged(damaged, tmp_path, fcnseg_main, one_line_error, file_hashes)
    with pytest.raises(ValueError, match="do not match the digest"):
        keep_fp32(damaged, fp32, ["relu_1"])  # not edited, nor given a new digest
    assert file_hashes(tmp_path) == before


def test_keeping_fp32_a_tensor_int8_left_alone_is_refused(quantized, tmp_path):
    _, fp32, int8 = quantized
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(int8.read_bytes())
    with pytest.raises(ValueError, match="'logits' is not quantized in the int8 file"):
        keep_fp32(copy, fp32, ["logits"])
    assert copy.read_bytes() == int8.read_bytes()


@pytest.mark.parametrize("needed", [0, 1, 3, 6, 16, 17])
def test_the_fewest_count_is_found_by_doubling_then_halving(needed):
    asked = []

    def reaches(count):
        asked.append(count)
        return count >= needed

    assert _fewest(16, reaches) == (needed if needed <= 16 else None)
    assert len(set(asked)) <= 9  # 0, 1, 2, 4, 8, 16 and at most three halvings


def test_the_fewest_activations_for_an_agreement_stay_fp32(quantized, tmp_path):
    path, fp32, int8 = quantized
    ranked = [name for name, _ in sensitive_activations(fp32, int8, _batches(path), images=2)]
    copy = tmp_path / "int8.onnx"
    copy.write_bytes(int8.read_bytes())

    def share(file):  # one more kept fp32, one tenth more labels kept
        return len(_record(file)["quantization"]["fp32_activations"]) / 10

    kept, tried = fewest_fp32(copy, fp32, ranked, share, target=0.3)
    assert kept == ranked[:3] and tried[3] == pytest.approx(0.3) and tried[2] < 0.3
    assert not set(kept) & _quantized_tensors(copy) and set(ranked[3:]) <= _quantized_tensors(copy)
    assert _record(copy)["quantization"]["fp32_activations"] == kept


def test_an_agreement_no_count_reaches_keeps_the_best_and_fewest(quantized, tmp_path):
    _, fp32, int8 = quantized
    copy = tmp_path / "int8.onnx"
    copy.write_bytes(int8.read_bytes())
    kept, tried = fewest_fp32(copy, fp32, ["relu_1", "max_pool2d_2"], lambda _: 0.5, target=0.9)
    assert kept == [] and sorted(tried) == [0, 1, 2]
    assert copy.read_bytes() == int8.read_bytes()  # the int8 file as it was


def test_agreement_is_the_share_of_labels_fp32_gives(quantized):
    path, fp32, int8 = quantized
    agreement = Agreement(fp32, _batches(path)[:3], Segmenter.from_checkpoint(path).spec)
    assert agreement(fp32) == 1.0
    assert AGREEMENT < agreement(int8) < 1.0


def _quantize_command(folder, *options: str):
    """``fcnseg quantize`` of a tiny checkpoint on 6 synthetic images (4 calibrate): the
    checkpoint, the int8 file and its report."""
    path = tiny_checkpoint(folder / "model.pt", classes=7)
    out = folder / "model.int8.onnx"
    status = main(["quantize", "--checkpoint", str(path), "--data", "synthetic",
                   "--option", "size=48", "--option", "num_images=6", "--images", "4",
                   *options, "--out", str(out)])  # fmt: skip
    assert status == 0 and out.is_file()
    return path, out, json.loads(out.with_suffix(".json").read_text())


@pytest.mark.slow
def test_quantize_command_writes_the_file_and_report(tmp_path, capsys):
    path, out, report = _quantize_command(tmp_path, "--fp32-activations", "2")
    assert report["calibration_images"] == 4 and report["images"] == 6
    assert len(report["fp32_activations"]) == 2
    assert 0.0 <= report["agreement"] <= 1.0
    printed = capsys.readouterr().out
    assert "of labels equal to fp32's" in printed and "mean IU fp32" in printed
    assert "keeping in fp32 the 2 activations int8 rounds worst" in printed
    status = main(["eval", "--checkpoint", str(path), "--onnx", str(out), "--data", "synthetic",
                   "--option", "size=48", "--option", "num_images=2", "--workers", "0",
                   "--out", str(tmp_path / "eval.json")])  # fmt: skip
    assert status == 0 and "engine" in capsys.readouterr().out


@pytest.mark.slow
def test_quantize_command_keeps_fp32_what_an_agreement_needs(tmp_path, capsys):
    _, out, report = _quantize_command(tmp_path, "--agreement", "100")
    assert report["agreement_target"] == 100
    assert _record(out)["quantization"]["fp32_activations"] == report["fp32_activations"]
    printed = capsys.readouterr().out
    assert "0 activations fp32:" in printed and "synthetic train images after the calibration" in printed


# ``fcnseg`` in a fresh process, as a user runs it, with the tiny test net registered first;
# after the command, how many handlers the root logger has
TINY_CLI = """import logging, sys, slim_models
from fcnseg.cli import main
from fcnseg.models.backbones import BACKBONES
BACKBONES[slim_models.TINY] = slim_models.TinyVGG
status = main(sys.argv[1:])
print(f"root logger handlers: {len(logging.getLogger().handlers)}")
sys.exit(status)
"""


def _folder_dataset(root, classes: int, images: int = 3):
    """An images/ + masks/ folder without splits, every class in every mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"class{i}\n" for i in range(classes)))
    rng = np.random.default_rng(0)
    for index in range(images):
        image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index}.png")
        mask = (np.arange(40 * 48).reshape(40, 48) + index) % classes
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{index}.png")
    return root


@pytest.mark.slow
@pytest.mark.subprocess
def test_quantize_says_what_it_calibrates_on_and_nothing_of_onnxruntime(tmp_path, cli_environment):
    path = tiny_checkpoint(tmp_path / "model.pt", classes=7)
    root = _folder_dataset(tmp_path / "data", classes=7)
    tests = str(Path(__file__).resolve().parent)
    env = {**cli_environment, "PYTHONPATH": f"{cli_environment['PYTHONPATH']}:{tests}"}
    result = subprocess.run(
        [sys.executable, "-c", TINY_CLI, "quantize", "--checkpoint", str(path), "--data", "folder",
         "--root", str(root), "--split", "none", "--images", "2", "--val-split", "none",
         "--out", str(tmp_path / "model.int8.onnx")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WARNING:root" not in result.stderr and result.stderr == "", result.stderr
    printed = result.stdout.splitlines()
    assert "calibrating on 2 folder images (minmax)" in printed, printed
    assert "None" not in result.stdout
    assert printed[-1] == "root logger handlers: 0"  # the user's logging left as it was


@pytest.mark.parametrize(
    "options, says",
    [(["--agreement", "0"], "percentage"),
     (["--agreement", "99", "--fp32-activations", "2"], "drop --fp32-activations")],
)  # fmt: skip
def test_a_wrong_agreement_is_one_line_and_writes_nothing(tmp_path, fcnseg_main, options, says):
    path = tiny_checkpoint(tmp_path / "model.pt", classes=7)
    before = {file: file.read_bytes() for file in tmp_path.rglob("*") if file.is_file()}
    result = fcnseg_main("quantize", "--checkpoint", path, "--data", "synthetic",
                        "--out", tmp_path / "model.int8.onnx", *options)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr
    after = {file: file.read_bytes() for file in tmp_path.rglob("*") if file.is_file()}
    assert after == before


def test_an_empty_calibration_folder_is_one_line(tmp_path, fcnseg_main):
    model = fcnseg.build_model("fcn32s_resnet18", num_classes=2)
    path = ckpt.save_checkpoint(record_of(model), tmp_path / "model.pt")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nthing\n")
    result = fcnseg_main("quantize", "--checkpoint", path, "--data", "folder", "--root", root,
                        "--split", "none", "--out", tmp_path / "x.onnx")  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "image" in lines[0], result.stderr


def test_eval_refuses_an_onnx_file_of_another_checkpoint(quantized, tmp_path, capsys):
    _, _, int8 = quantized
    other = tiny_checkpoint(tmp_path / "other.pt", seed=5, classes=7)
    status = main(["eval", "--checkpoint", str(other), "--onnx", str(int8), "--data", "synthetic",
                   "--option", "size=48"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and len(lines) == 1 and "another checkpoint" in lines[0], lines
