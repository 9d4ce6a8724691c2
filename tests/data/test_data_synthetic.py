"""The built-in synthetic dataset: deterministic, every class present, and detail finer
than a 32-pixel stride can draw (so FCN-8s has something to win over FCN-32s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.data import SYNTHETIC_CLASSES, SyntheticShapes, build_dataset

NUM_CLASSES = len(SYNTHETIC_CLASSES)


def test_same_seed_split_and_index_give_the_same_scene():
    a = SyntheticShapes("train", num_images=5, seed=3)
    b = SyntheticShapes("train", num_images=5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a[4], b[4], strict=True))
    assert not torch.equal(a[4][0], a[3][0])
    assert not torch.equal(a[4][0], SyntheticShapes("train", num_images=5, seed=4)[4][0])
    assert not torch.equal(a[4][0], SyntheticShapes("val", num_images=5, seed=3)[4][0])
    assert torch.equal(a[1][0], a[-4][0])  # negative indices like a sequence


def test_contract_sizes_and_registry():
    dataset = build_dataset("synthetic", split="val", num_images=3, size=(40, 56))
    image, label = dataset[2]
    assert len(dataset) == 3 and dataset.num_classes == NUM_CLASSES >= 6
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 255
    assert label.shape == (40, 56) and label.dtype == torch.int64
    assert len(dataset.palette) == NUM_CLASSES and dataset.ignore_index == 255
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(ValueError, match="splits"):
        SyntheticShapes("trainaug")
    assert len(SyntheticShapes("train")) == 1000


def test_every_class_appears_with_occlusion_and_clutter():
    dataset = SyntheticShapes("train", num_images=20, size=96)
    counts = np.zeros(NUM_CLASSES)
    for index in range(20):
        image, label = dataset.generate(index)
        counts += np.bincount(label.ravel(), minlength=NUM_CLASSES)
        background = image[label == 0].reshape(-1, 3).astype(float)
        assert background.std(axis=0).mean() > 8  # shaded, cluttered, never flat
    assert (counts > 0).all(), counts
    assert counts[0] / counts.sum() < 0.9


def block_oracle(label: np.ndarray, stride: int) -> np.ndarray:
    """The best a net with output stride ``stride`` and nearest upsampling could paint: the
    majority class of each stride x stride block."""
    height, width = label.shape
    rows, cols = -(-height // stride), -(-width // stride)
    padded = np.full((rows * stride, cols * stride), NUM_CLASSES, dtype=np.int64)
    padded[:height, :width] = label
    blocks = padded.reshape(rows, stride, cols, stride).transpose(0, 2, 1, 3)
    votes = (blocks.reshape(rows, cols, -1, 1) == np.arange(NUM_CLASSES)).sum(2)
    coarse = votes.argmax(-1)
    return np.repeat(np.repeat(coarse, stride, 0), stride, 1)[:height, :width]


def mean_iu(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for truth, guess in pairs:
        confusion += np.bincount(
            truth.ravel() * NUM_CLASSES + guess.ravel(), minlength=NUM_CLASSES**2
        ).reshape(NUM_CLASSES, NUM_CLASSES)
    hits = np.diag(confusion)
    return float(np.mean(hits / (confusion.sum(0) + confusion.sum(1) - hits)))


def test_scenes_hold_detail_below_a_32_pixel_stride():
    dataset = SyntheticShapes("val", num_images=24, size=128)
    labels = [dataset.generate(i)[1].astype(np.int64) for i in range(24)]
    iu = {s: mean_iu([(t, block_oracle(t, s)) for t in labels]) for s in (8, 32)}
    assert iu[8] - iu[32] > 0.15, iu  # stride-8 output can follow what stride 32 cannot
    thin = [t for t in labels if (t == SYNTHETIC_CLASSES.index("pole")).any()]
    assert thin, "no poles drawn"
