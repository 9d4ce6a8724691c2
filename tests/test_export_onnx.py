"""ONNX export: one file runs in onnxruntime at any image size and matches PyTorch.

The nets are exported from a 64 x 64 example and run at 97 x 131 and 160 x 224: sizes
whose crops and fusions differ from the example's, so a size baked into the graph
shows as a wrong shape or a large difference. Two geometries: FCN-8s on ResNet-18
(aligned: skips fused at negative offsets, replicated borders) and FCN-8s on a slim
VGG16 in the reference's caffe geometry (pad 100, ceil-mode pools, crops 5, 9, 31).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from slim_models import fcn_on, tiny_checkpoint
from test_engines import tiny_backbone  # noqa: F401 (autouse: registers the tiny net)

import fcnseg
from fcnseg.cli import main
from fcnseg.models import FCN
from fcnseg.models.backbones import VGG16

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fcnseg.export import OnnxCheck, check_onnx, export_onnx, load_onnx  # noqa: E402

SIZES = ((97, 131), (160, 224))

pytestmark = [pytest.mark.onnx, pytest.mark.usefixtures("one_thread")]


def randomise_scores(model: FCN, seed: int) -> FCN:
    """Score layers start at zero: randomise them so the outputs vary."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.head.named_parameters():
            if key.startswith("score"):
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def slim_fcn8s_vgg16() -> FCN:
    backbone = VGG16(widths=(8, 8, 16, 16, 16), fc_channels=32)  # caffe geometry
    model = fcn_on(backbone, 3, "8s", name="fcn8s_vgg16")
    assert model.head.crop_offsets() == {"score_pool4c": 5, "score_pool3c": 9, "score": 31}
    return randomise_scores(model, seed=1)


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory) -> tuple[FCN, Path]:
    torch.manual_seed(0)
    model = randomise_scores(fcnseg.build_model("fcn8s_resnet18", num_classes=3), seed=0)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("onnx")
    path = export_onnx(model, folder / "fcn8s_resnet18.onnx", example_size=(1, 3, 64, 64))
    assert model.training  # traced in eval mode, then put back in training mode
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left
    return model, path


@pytest.fixture(scope="module")
def slim_export(tmp_path_factory) -> tuple[FCN, Path]:
    """The slim caffe-geometry FCN-8s and its export, made once (an export takes seconds):
    a test that changes the file changes a copy."""
    model = slim_fcn8s_vgg16()
    folder = tmp_path_factory.mktemp("slim")
    return model, export_onnx(model, folder / "fcn8s_vgg16.onnx", example_size=(1, 3, 64, 64))


def assert_close_at_two_sizes(model: FCN, path: Path) -> None:
    for check in check_onnx(model, path, SIZES):
        print(f"{model.name} {check}")  # the max abs differences, shown with pytest -s
        assert check.max_abs_logit > 1e-2  # the outputs are not trivially zero
        assert check.max_abs_diff < 1e-4 * max(1.0, check.max_abs_logit)


def test_resnet18_fcn8s_matches_pytorch_at_two_sizes(resnet_export) -> None:
    assert_close_at_two_sizes(*resnet_export)


def test_caffe_geometry_fcn8s_matches_pytorch_at_two_sizes(slim_export) -> None:
    assert_close_at_two_sizes(*slim_export)


def test_runner_reads_the_metadata_and_any_batch(resnet_export) -> None:
    model, path = resnet_export
    runner = load_onnx(path)
    assert runner.name == "fcn8s_resnet18" and runner.num_classes == 3
    assert runner.normalization == model.normalization
    images = np.random.default_rng(0).standard_normal((3, 3, 50, 70)).astype(np.float32)
    logits = runner(images)["semantic"]  # logits by task
    assert logits.shape == (3, 3, 50, 70)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="N x C x H x W"):
        runner(images[0])


def test_load_onnx_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx: no such ONNX file"):
        load_onnx(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"garbage\.onnx: not a loadable ONNX model"):
        load_onnx(garbage)


@pytest.mark.parametrize("random_scores", [False, True])
def test_the_export_check_of_untrained_score_layers_says_it_proves_nothing(
    tmp_path, capsys, random_scores
) -> None:
    """Score layers start at zero, so an untrained model scores every pixel 0 in PyTorch and
    in any graph: a difference of 0 then says nothing of the export."""
    path = tiny_checkpoint(tmp_path / "model.pt", random_scores=random_scores)
    out = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--checkpoint", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    checks = [line for line in printed if line.startswith("onnxruntime vs PyTorch at ")]
    assert len(checks) == 2, printed
    for line in checks:
        if random_scores:
            assert "max abs diff" in line and "proves nothing" not in line, line
        else:
            assert "proves nothing: the model's scores are all zero" in line, line
            assert "max abs diff" not in line, line


def test_a_check_of_constant_scores_proves_nothing() -> None:
    constant = OnnxCheck((97, 131), max_abs_diff=0.0, max_abs_logit=1.5, spread=0.0)
    assert constant.proves_nothing and "proves nothing" in str(constant)
    assert "one constant" in str(constant)
    varied = OnnxCheck((97, 131), max_abs_diff=1e-6, max_abs_logit=1.5, spread=2.0)
    assert not varied.proves_nothing and "max abs diff 1.00e-06" in str(varied)


def flip_a_weight_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest weight's raw data: the file still parses
    as ONNX, only a weight has changed."""
    weight = max(onnx.load(str(path)).graph.initializer, key=lambda init: len(init.raw_data))
    data = bytearray(path.read_bytes())
    start = data.find(weight.raw_data)
    assert start >= 0 and data.find(weight.raw_data, start + 1) < 0  # found, once
    data[start + len(weight.raw_data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert onnx.load(str(path)).graph.initializer  # still a readable model


def predict_refuses_damaged(damaged: Path, tmp_path: Path, fcnseg_main, one_line_error, file_hashes):
    """``fcnseg predict`` with the damaged file on one photo: rc 2, one line naming the file
    and the fix, and every file in ``tmp_path`` as it was (their hashes come back)."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "photos" / "street.png")
    before = file_hashes(tmp_path)
    result = fcnseg_main("predict", "--checkpoint", damaged, tmp_path / "photos",
                        "--out", tmp_path / "masks")  # fmt: skip
    assert result.returncode == 2
    line = one_line_error(result)
    assert str(damaged) in line and "do not match the digest" in line and "export it again" in line
    assert file_hashes(tmp_path) == before
    return before


def test_an_onnx_file_with_a_flipped_weight_byte_is_one_line(
    slim_export, tmp_path, fcnseg_main, one_line_error, file_hashes
) -> None:
    exported = Path(shutil.copyfile(slim_export[1], tmp_path / "model.onnx"))
    flip_a_weight_byte(exported)
    predict_refuses_damaged(exported, tmp_path, fcnseg_main, one_line_error, file_hashes)
    with pytest.raises(ValueError, match="do not match the digest"):
        load_onnx(exported)


def test_an_onnx_file_written_before_the_digest_still_loads(
    slim_export, tmp_path, fcnseg_main
) -> None:
    exported = Path(shutil.copyfile(slim_export[1], tmp_path / "model.onnx"))
    model = onnx.load(str(exported))
    entry = next(prop for prop in model.metadata_props if prop.key == "fcnseg.record")
    record = json.loads(entry.value)
    assert "weights_sha256" in record
    del record["weights_sha256"]
    entry.value = json.dumps(record)
    onnx.save(model, str(exported))
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "photos" / "street.png")
    result = fcnseg_main("predict", "--checkpoint", exported, tmp_path / "photos",
                        "--out", tmp_path / "masks")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "masks" / "street.png").is_file()


@pytest.mark.parametrize(
    ("tasks", "recorded"),
    [({"semantic": 5}, "holds 5,"), ({"semantic": 4, "geometric": 3}, "semantic 4, geometric 3")],
    ids=["one task", "two tasks"],
)
def test_num_classes_must_be_the_count_of_every_task(
    tmp_path, fcnseg_cli, one_line_error, file_hashes, tasks, recorded
) -> None:
    """``--num-classes`` that is not what the checkpoint records is refused before anything
    is written; a two-task checkpoint (SIFT Flow's kind) is checked on both tasks, so the
    first task's count alone does not pass."""
    net = fcnseg.build_model("fcn32s_efficientnet_lite0", tasks=tasks)
    path = fcnseg.save_weights(tmp_path / "model.pt", net)
    before = file_hashes(tmp_path)
    result = fcnseg_cli("export", "onnx", "--checkpoint", path, "--out", tmp_path / "model.onnx",
                        "--num-classes", "4" if len(tasks) > 1 else "3", "--no-check")  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert str(path) in line and recorded in line and "--num-classes" in line
    assert file_hashes(tmp_path) == before
