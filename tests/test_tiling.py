"""Sliding-window inference: tiles cover the image, overlaps average, results match."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcnseg
from fcnseg.cli import main
from fcnseg.data import SYNTHETIC_CLASSES, voc_palette
from fcnseg.inference import Segmenter
from fcnseg.tiling import Tiling, sliding_window, tile_starts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "length, tile, stride, starts",
    [(10, 4, 3, [0, 3, 6]), (10, 4, 4, [0, 4, 6]), (4, 4, 2, [0]), (3, 8, 5, [0])],
)
def test_tile_starts_cover_the_side_and_end_at_the_border(length, tile, stride, starts):
    assert tile_starts(length, tile, stride) == starts
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()


@pytest.mark.parametrize("stride", [0, 5])
def test_tile_strides_that_leave_gaps_are_refused(stride):
    with pytest.raises(ValueError, match="tile stride"):
        tile_starts(9, 4, stride)


def test_tiling_defaults_and_bad_settings():
    assert Tiling.of(512) == Tiling(size=(512, 512), overlap=(170, 170))
    assert Tiling.of((300, 400), 10).stride == (290, 390)
    with pytest.raises(ValueError, match="overlap"):
        Tiling.of(64, 64)
    with pytest.raises(ValueError, match="overlap"):
        Tiling.of(0)


def test_pointwise_model_tiles_exactly():
    """A 1 x 1 convolution sees no context: tiled scores equal whole-image ones."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    image = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        tiled = sliding_window(model, image, Tiling.of(16, 5))
        torch.testing.assert_close(tiled, model(image))


def test_overlaps_average_the_tiles():
    """Each pixel gets the mean of the tiles covering it: count tiles with a model of ones."""
    calls = []

    def ones(tile):
        calls.append(tuple(tile.shape[-2:]))
        return torch.ones(1, 1, *tile.shape[-2:]) * len(calls)

    scores = sliding_window(ones, torch.zeros(1, 3, 10, 7), Tiling.of((4, 7), 1))
    assert calls == [(4, 7)] * 3  # rows start at 0, 3, 6; one column
    expected = torch.tensor([1, 1, 1, 1.5, 2, 2, 2.5, 3, 3, 3])[:, None].expand(10, 7)
    torch.testing.assert_close(scores[0, 0], expected)


def test_small_image_runs_whole_and_dicts_pass_through():
    def model(batch):
        return {"a": batch["color"][:, :2] + batch["depth"], "b": batch["depth"]}

    batch = {"color": torch.randn(1, 3, 20, 30), "depth": torch.randn(1, 1, 20, 30)}
    whole = model(batch)
    small = sliding_window(model, batch, Tiling.of(64))
    assert small is not None and torch.equal(small["a"], whole["a"])
    tiled = sliding_window(model, batch, Tiling.of(12, 4))
    assert set(tiled) == {"a", "b"}
    torch.testing.assert_close(tiled["a"], whole["a"])
    torch.testing.assert_close(tiled["b"], whole["b"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=7)
    with torch.no_grad():
        model.head.score_pool3.weight.normal_(0, 0.1)
        model.head.score_fr.weight.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return fcnseg.save_weights(path, model, classes=SYNTHETIC_CLASSES, palette=voc_palette(7))


def test_segmenter_scores_tile_by_tile(checkpoint):
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    whole = Segmenter.from_checkpoint(checkpoint)
    tiled = Segmenter.from_checkpoint(checkpoint, tiling=Tiling.of(96, 48))
    batch = whole.batch(image)  # {"image": 1 x 3 x H x W}, normalised
    with torch.inference_mode():
        by_hand = sliding_window(whole.model, batch, Tiling.of(96, 48))
        scores = tiled.scores(batch)["semantic"]
        untiled = whole.scores(batch)["semantic"]
    torch.testing.assert_close(scores, by_hand, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores, untiled, rtol=1e-2, atol=0)  # it did tile
    labels = tiled.predict(image)
    assert labels.shape == (150, 200)
    assert (labels == scores[0].argmax(0).numpy()).all()


def test_predict_cli_tiles_and_rejects_bad_tiles(checkpoint, tmp_path, capsys):
    array = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "big.png")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "big.png")]
    assert main([*args, "--out", str(out), "--tile", "48", "--tile-overlap", "16"]) == 0
    assert Image.open(out / "big.png").size == (90, 70)
    assert main([*args, "--out", str(out), "--tile", "48", "--tile-overlap", "48"]) == 2
    assert "--tile-overlap 48 must be at least 0 and less than --tile 48" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--tile-overlap", "8"]) == 2
    assert "--tile-overlap needs --tile" in capsys.readouterr().err


@pytest.mark.parametrize("size", [16, (64, 31)])
def test_tiles_below_the_coarsest_stride_are_refused(checkpoint, size):
    """FCN-8s Lite0 scores from stride-32 features: a tile narrower than one of their cells
    would change most labels without a word."""
    with pytest.raises(ValueError, match=r"use tiles of at least 32 pixels") as error:
        Segmenter.from_checkpoint(checkpoint, tiling=Tiling.of(size, 0))
    assert "\n" not in str(error.value)
    assert Segmenter.from_checkpoint(checkpoint, tiling=Tiling.of(32)).tiling.size == (32, 32)


def test_predict_cli_refuses_a_tile_below_the_coarsest_stride(
    checkpoint, tmp_path, fcnseg_main, one_line_error, file_hashes
):
    photos = tmp_path / "photos"
    photos.mkdir()
    array = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(array).save(photos / "a.png")
    before = file_hashes(photos)
    out = tmp_path / "out"
    result = fcnseg_main("predict", "--checkpoint", checkpoint, photos, "--out", out, "--tile", "16")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "tile 16x16 is smaller than the 32-pixel stride" in line
    assert "(--tile 32" in line
    assert not out.exists() or not any(out.iterdir())
    assert file_hashes(photos) == before
