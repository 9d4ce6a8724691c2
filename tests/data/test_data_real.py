"""The readers on the real published files in ../shared/data (CamVid, a VOC sample);
skipped with a reason where that folder is absent, as on a user's machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fcnseg.data import (
    CAMVID_PALETTE,
    CamVid,
    DatasetError,
    VOCSegmentation,
    pad_collate,
    train_transforms,
    voc_palette,
)
from fcnseg.data.base import read_label
from fcnseg.data.palettes import colors_to_indices
from fcnseg.models.normalization import CAFFE_VOC

# ../shared/data relative to the repository root (this file is tests/data/test_data_real.py)
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CAMVID = DATA / "camvid"
VOC_SAMPLE = DATA / "voc-sample"

needs_camvid = pytest.mark.skipif(
    not (CAMVID / "train.txt").is_file(), reason=f"real CamVid not found at {CAMVID}"
)
needs_voc = pytest.mark.skipif(
    not (VOC_SAMPLE / "2007_000129.png").is_file(), reason=f"VOC sample not found at {VOC_SAMPLE}"
)


@needs_camvid
def test_camvid_splits_and_samples():
    train, val = CamVid(CAMVID, "train"), CamVid(CAMVID, "val")
    assert (len(train), len(val)) == (367, 101)
    image, label = train[0]
    assert image.shape == (3, 360, 480) and label.shape == (360, 480)
    raw = np.asarray(Image.open(CAMVID / "trainannot" / f"{train.ids[0]}.png")).astype(np.int64)
    assert np.array_equal(label.numpy(), np.where(raw == 11, 255, raw))
    assert set(label.unique().tolist()) <= set(range(11)) | {255}
    with pytest.raises(DatasetError, match="test.txt"):
        CamVid(CAMVID, "test")  # the published test split is not in the shared copy


@needs_camvid
def test_camvid_class_frequencies_match_the_published_ones():
    dataset = CamVid(CAMVID, "train")
    counts = np.zeros(12)
    for sample in dataset.samples:
        counts += np.bincount(read_label(sample.label).ravel(), minlength=12)[:12]
    frequency = counts / counts.sum()
    # ../shared/data/README.md: Sky .169, Road .317, Pole .010, Unlabelled .040
    for index, published in ((0, 0.169), (3, 0.317), (2, 0.010), (11, 0.040)):
        assert frequency[index] == pytest.approx(published, abs=0.003)


@needs_camvid
def test_camvid_palette_is_the_published_strip():
    strip = np.asarray(Image.open(CAMVID / "palette11.png").convert("RGB"))[0, :11]
    assert [tuple(int(c) for c in color) for color in strip] == CAMVID_PALETTE


@needs_camvid
def test_camvid_training_pipeline_batches():
    dataset = CamVid(CAMVID, "train", transforms=train_transforms(CAFFE_VOC, crop_size=224, seed=0))
    images, labels = next(iter(DataLoader(dataset, batch_size=2, collate_fn=pad_collate)))
    assert images.shape == (2, 3, 224, 224) and labels.shape == (2, 224, 224)
    assert labels.dtype == torch.int64 and images.abs().max() < 200  # mean-subtracted


def voc_layout(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (base / folder).mkdir(parents=True)
        shutil.copy(VOC_SAMPLE / f"2007_000129{suffix}", base / folder)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000129\n")
    return root


@needs_voc
def test_voc_sample_reads_with_its_void_border(tmp_path):
    dataset = VOCSegmentation(voc_layout(tmp_path), "val")
    image, label = dataset[0]
    assert image.shape == (3, 500, 334) and label.shape == (500, 334)  # portrait
    assert set(label.unique().tolist()) == {0, 2, 15, 255}  # background, bicycle, person, void
    assert dataset.classes[2] == "bicycle" and dataset.classes[15] == "person"


@needs_voc
def test_voc_palette_generator_matches_the_published_png():
    palette = Image.open(VOC_SAMPLE / "2007_000129.png").getpalette()
    assert [tuple(palette[i : i + 3]) for i in range(0, 768, 3)] == voc_palette(256)


@needs_voc
def test_reference_prediction_decodes_through_the_palette():
    label = np.asarray(Image.open(VOC_SAMPLE / "2007_000129.png")).astype(np.int64)
    colours = np.asarray(
        Image.open(VOC_SAMPLE / "2007_000129_fcn8s_reference_output.png").convert("RGB")
    )
    palette = voc_palette(21)
    predicted = colors_to_indices(colours, palette, range(21), "reference output")
    assert set(np.unique(predicted).tolist()) <= {0, 2, 15}
    scored = label != 255
    assert (predicted[scored] == label[scored]).mean() > 0.8
