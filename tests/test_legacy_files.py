"""Files written by fcnseg 0.1 still load (issue 12): a training checkpoint, a .pt and a
.safetensors weights file of fcn8s_efficientnet_lite0 (tests/fixtures/legacy/README.md),
through every reader, to the scores 0.1 computed."""

from __future__ import annotations

import gzip
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg import modelfile
from fcnseg.inference import Segmenter

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
FILES = {
    "checkpoint": "checkpoint_v1.pt.gz",
    "pt": "weights_v1.pt.gz",
    "safetensors": "weights_v1.safetensors.gz",
}
NORMALIZATION = {"mean": (127.0,) * 3, "std": (128.0,) * 3}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("legacy")
    paths = {}
    for kind, name in FILES.items():
        target = folder / name.removesuffix(".gz")
        with gzip.open(LEGACY / name) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
        paths[kind] = target
    return paths


def _raw() -> torch.Tensor:
    return torch.linspace(0, 255, 3 * 45 * 61).reshape(1, 3, 45, 61)


def _expected() -> torch.Tensor:
    return torch.load(LEGACY / "expected_output.pt", weights_only=True)["output"]


@pytest.mark.parametrize("kind", sorted(FILES))
def test_read_record_gives_todays_spec(legacy, kind: str) -> None:
    record = modelfile.read_record(legacy[kind])
    spec = record.spec
    assert spec.name == "fcn8s_efficientnet_lite0"
    assert spec.backbone == "efficientnet_lite0" and spec.variant == "8s"
    assert spec.task_classes == {"semantic": 3} and spec.input_channels == {"image": 3}
    assert spec.geometry == "aligned" and spec.output_stride == 32
    norm = spec.inputs[0].normalization
    assert tuple(norm.mean) == NORMALIZATION["mean"] and tuple(norm.std) == NORMALIZATION["std"]
    assert len(record.state_dict) == 303
    if kind == "checkpoint":
        assert record.classes == {"semantic": ("sky", "road", "car")}
        assert record.palette == {"semantic": [(0, 0, 0), (255, 0, 0), (0, 255, 0)]}
        assert record.metrics == {"mean_iu": 0.5}
    else:
        assert record.classes == {"semantic": ("class 0", "class 1", "class 2")}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_load_weights_reproduces_the_scores_of_0_1(legacy, kind: str) -> None:
    model = fcnseg.load_weights(legacy[kind]).eval()
    with torch.no_grad():
        scores = model(model.normalization(_raw()))
    torch.testing.assert_close(scores, _expected(), rtol=1e-5, atol=1e-5)
    record = modelfile.read_record(legacy[kind])
    with torch.no_grad():  # the record builds the same model
        again = record.build().eval()(model.normalization(_raw()))
    torch.testing.assert_close(again, scores, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(FILES))
def test_segmenter_from_a_0_1_file_predicts_its_labels(legacy, kind: str) -> None:
    segmenter = Segmenter.from_checkpoint(legacy[kind])
    image = _raw()[0].permute(1, 2, 0).numpy()  # H x W x 3 in 0..255, as 0.1 was fed
    labels, probs = segmenter.predict(image, probabilities=True)
    expected = _expected()[0]
    np.testing.assert_allclose(probs, expected.softmax(0).numpy(), rtol=1e-4, atol=1e-5)
    margin = expected.topk(2, dim=0).values
    clear = (margin[0] - margin[1] > 1e-3).numpy()  # labels where no near-tie could flip
    assert np.array_equal(labels[clear], expected.argmax(0).numpy()[clear])
    if kind == "checkpoint":
        assert segmenter.classes == ("sky", "road", "car")


def test_a_0_1_file_saved_again_is_todays_format(legacy, tmp_path) -> None:
    model = fcnseg.load_weights(legacy["checkpoint"])
    path = fcnseg.save_weights(tmp_path / "model.safetensors", model)
    again = fcnseg.load_weights(path).eval()
    assert again.spec == model.spec
    with torch.no_grad():
        torch.testing.assert_close(
            again(again.normalization(_raw())), _expected(), rtol=1e-5, atol=1e-5
        )


def _flip_a_weight_byte(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor storage of a ``torch.save`` archive,
    as a failing disk or a bad copy would; the zip headers stay intact."""
    with zipfile.ZipFile(path) as archive:
        storages = [entry for entry in archive.infolist() if "/data/" in entry.filename]
    entry = max(storages, key=lambda entry: entry.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
    start = entry.header_offset + 30 + name_length + extra_length  # after the local header
    data[start + entry.file_size // 2] ^= 0x40
    path.write_bytes(data)


@pytest.mark.parametrize("kind", ["checkpoint", "pt"])
def test_a_damaged_0_1_torch_file_is_refused_in_one_line(
    legacy, kind, tmp_path, fcnseg_main, file_hashes, one_line_error
) -> None:
    """0.1 files carry no checksum of fcnseg's; the CRC-32 of their zip entries catches a
    changed byte that torch.load would read as a wrong weight."""
    path = tmp_path / legacy[kind].name
    shutil.copyfile(legacy[kind], path)
    _flip_a_weight_byte(path)
    before = file_hashes(tmp_path)
    result = fcnseg_main("weights", "inspect", path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith(f"fcnseg: error: model file {path} is damaged")
    assert "CRC-32" in line and "another copy" in line
    assert file_hashes(tmp_path) == before
