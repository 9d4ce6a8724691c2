"""Test-time augmentation: one scale without flip is plain inference; flip TTA of a mirror-
symmetric image is mirror-symmetric; every engine, whole and tiled, gives torch's TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slim_models import raw_images
from test_engines import tiny_backbone  # noqa: F401 (autouse: registers the tiny net)

from fcnseg import engines
from fcnseg.inference import Segmenter
from fcnseg.tiling import Tiling
from fcnseg.tta import TTA, tta_forward

pytestmark = pytest.mark.usefixtures("one_thread")

TILING = Tiling.of((48, 40), overlap=(16, 10))


@pytest.fixture
def checkpoint(tiny_vgg_file):
    return tiny_vgg_file()


def _batch(segmenter, height=45, width=61, seed=0):
    return segmenter.batch(raw_images(segmenter.spec, height, width, seed)["image"])


def test_one_scale_without_flip_is_plain_inference(checkpoint):
    plain = Segmenter.from_checkpoint(checkpoint)
    same = Segmenter.from_checkpoint(checkpoint, tta=TTA.of([1.0], flip=False))
    batch = _batch(plain)
    assert torch.equal(plain.scores(batch)["semantic"], same.scores(batch)["semantic"])


def test_flip_tta_of_a_symmetric_image_is_symmetric(checkpoint):
    segmenter = Segmenter.from_checkpoint(checkpoint, tta=TTA.of([0.75, 1.0], flip=True))
    half = raw_images(segmenter.spec, 45, 30)["image"]
    image = np.concatenate([half, half[:, ::-1]], axis=1)  # 45 x 60, mirror-symmetric
    scores = segmenter.scores(segmenter.batch(image))["semantic"]
    plain = Segmenter.from_checkpoint(checkpoint).scores(segmenter.batch(image))["semantic"]
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-4)  # the net alone is not
    torch.testing.assert_close(scores, scores.flip(-1), atol=1e-5, rtol=0)


def test_scales_average_at_the_input_size():
    def forward(batch):  # scores: the input's mean channel, at the input's size
        return {"semantic": batch["image"].mean(1, keepdim=True)}

    image = {"image": torch.ones(1, 3, 30, 41)}
    scores = tta_forward(forward, image, TTA.of([0.5, 1.0, 1.5], flip=True))
    assert scores["semantic"].shape == (1, 1, 30, 41)
    torch.testing.assert_close(scores["semantic"], torch.ones(1, 1, 30, 41))


@pytest.mark.onnx
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("tiling", [None, TILING], ids=["whole", "tiled"])
def test_every_engine_gives_torchs_tta(engine, tiling, checkpoint):
    if not engines.installed(engine):
        pytest.skip(f"engine {engine} is not installed")
    tta = TTA.of([0.75, 1.25], flip=True)
    reference = Segmenter.from_checkpoint(checkpoint, tta=tta, tiling=tiling)
    segmenter = Segmenter.from_checkpoint(checkpoint, tta=tta, tiling=tiling, engine=engine)
    batch = _batch(reference, 61, 75)
    expected = reference.scores(batch)["semantic"]
    torch.testing.assert_close(segmenter.scores(batch)["semantic"], expected, atol=1e-4, rtol=0)


def test_bad_scales_are_refused():
    with pytest.raises(ValueError, match="between 0.1 and 4"):
        TTA.of([0.0])
