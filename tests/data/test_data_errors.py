"""Bad input: each case is one clear line naming the file and what is wrong, never a deep
PIL or scipy traceback; odd but valid files (grayscale, RGBA, 16-bit, EXIF-rotated) read
correctly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import (
    SBD,
    CamVid,
    Cityscapes,
    DatasetError,
    FolderDataset,
    LabelMap,
    NYUDv2,
    PascalContext,
    SiftFlow,
    VOCSegmentation,
    build_dataset,
    list_datasets,
    register_dataset,
)
from fcnseg.data.base import read_image, read_mat
from fcnseg.data.palettes import colors_to_indices


def one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
    """The message is a single line, holds every fragment, and hides PIL/scipy internals."""
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    assert error.value.__cause__ is None
    return message


READERS = [VOCSegmentation, SBD, CamVid, SiftFlow, NYUDv2, PascalContext, Cityscapes, FolderDataset]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_missing_root(tmp_path, reader):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as error:
        reader(missing, "train")
    one_line(error, missing, "does not exist")


@pytest.mark.parametrize("reader", [VOCSegmentation, SBD, CamVid, NYUDv2])
def test_missing_split_file(tmp_path, make, reader):
    maker = {VOCSegmentation: make.voc, SBD: make.sbd, CamVid: make.camvid, NYUDv2: make.nyud}
    maker[reader](tmp_path)
    with pytest.raises(DatasetError) as error:
        reader(tmp_path, "trainaug")
    one_line(error, "trainaug.txt")


def test_root_without_the_dataset(tmp_path):
    with pytest.raises(DatasetError) as error:
        VOCSegmentation(tmp_path, "train")
    one_line(error, tmp_path, "VOCdevkit/VOC2012/JPEGImages", "download")


def test_listed_image_without_label(tmp_path, make):
    make.voc(tmp_path)
    label = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000039.png"
    label.unlink()
    with pytest.raises(DatasetError) as error:
        VOCSegmentation(tmp_path, "train")
    one_line(error, label, "missing")


def test_listed_label_without_image(tmp_path, make):
    base = make.camvid(tmp_path)
    (base / "train" / "0001TP_006690.png").unlink()
    with pytest.raises(DatasetError) as error:
        CamVid(tmp_path, "train")
    one_line(error, base / "train" / "0001TP_006690.png", "train.txt")


def test_folder_image_without_mask_and_mask_without_image(tmp_path, make):
    make.folder(tmp_path)
    make.save_rgb(tmp_path / "images" / "c.jpg", make.rgb(5))
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)
    one_line(error, tmp_path / "images" / "c.jpg", "no mask")
    (tmp_path / "images" / "c.jpg").unlink()
    make.save_gray_png(tmp_path / "masks" / "d.png", make.labels(5, 3))
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)
    one_line(error, tmp_path / "masks" / "d.png", "no image")


def test_folder_refuses_jpeg_masks_saying_why_and_what_to_do(tmp_path, make):
    """A JPEG mask is refused by name, with the reason (lossy edges) and the fix (PNG), even
    beside a valid PNG mask of the same stem."""
    make.folder(tmp_path)
    jpeg = tmp_path / "masks" / "a.jpg"
    make.save_rgb(jpeg, np.stack([make.labels(0, 3)] * 3, axis=-1), quality=90)
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)
    one_line(error, jpeg, "lossy compression invents labels")
    assert "save the masks as PNG" in str(error.value)
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(DatasetError, match="lossy"):
        FolderDataset(tmp_path)


def test_cityscapes_image_without_label_and_reverse(tmp_path, make):
    make.cityscapes(tmp_path)
    label = tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    moved = label.with_name("x_000001_000019_gtFine_labelIds.png")
    label.rename(moved)
    with pytest.raises(DatasetError) as error:
        Cityscapes(tmp_path, "train")
    one_line(error, "aachen_000001_000019_leftImg8bit.png", "has no label")
    (tmp_path / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(DatasetError) as error:
        Cityscapes(tmp_path, "train")
    one_line(error, moved, "has no image")


def test_truncated_image(tmp_path, make):
    make.voc(tmp_path)
    path = tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg"
    path.write_bytes(path.read_bytes()[:200])
    dataset = VOCSegmentation(tmp_path, "train")
    with pytest.raises(DatasetError) as error:
        dataset[0]
    one_line(error, path, "corrupt or truncated")
    assert error.value.__suppress_context__  # raised "from None": no PIL traceback chained


def test_unreadable_label(tmp_path, make):
    make.voc(tmp_path)
    path = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError) as error:
        VOCSegmentation(tmp_path, "train")[0]
    one_line(error, path, "cannot be decoded")


def test_corrupt_or_foreign_mat_file(tmp_path, make):
    make.sbd(tmp_path)
    path = tmp_path / "benchmark_RELEASE/dataset/cls/2008_000002.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    with pytest.raises(DatasetError) as error:
        SBD(tmp_path, "train")[0]
    one_line(error, path, "MATLAB")
    make.save_mat(path, {"segmentation": np.zeros((3, 3), np.uint8)})
    with pytest.raises(DatasetError) as error:
        read_mat(path, "GTcls", "Segmentation")
    one_line(error, path, "'GTcls'", "segmentation")


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("missing", "is missing: check the path, or re-extract the dataset it belongs to"),
        ("folder", "is not a regular file but a folder"),
        pytest.param(
            "fifo",
            "is not a regular file but a FIFO",
            marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX"),
        ),
    ],
)
def test_an_image_or_label_that_is_no_regular_file_says_what_it_is(tmp_path, make, kind, fragment):
    make.voc(tmp_path)
    base = tmp_path / "VOCdevkit/VOC2012"
    dataset = VOCSegmentation(tmp_path, "train")  # the files are checked; then they change
    for path in (base / "JPEGImages/2007_000032.jpg", base / "SegmentationClass/2007_000039.png"):
        path.unlink()
        if kind == "folder":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
    with pytest.raises(DatasetError) as error:
        dataset[1]
    one_line(error, f"label {base / 'SegmentationClass/2007_000039.png'} {fragment}")
    with pytest.raises(DatasetError) as error:
        read_image(base / "JPEGImages/2007_000032.jpg")
    one_line(error, f"image {base / 'JPEGImages/2007_000032.jpg'} {fragment}")


def test_image_and_label_of_different_sizes(tmp_path, make):
    make.voc(tmp_path)
    path = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000039.png"
    make.save_palette_png(path, np.zeros((10, 16), np.uint8))
    with pytest.raises(DatasetError) as error:
        VOCSegmentation(tmp_path, "train")[1]
    one_line(error, path, "16x10", "16x12", "same size")


@pytest.mark.parametrize(("value", "reader"), [(37, "voc"), (12, "camvid"), (21, "sbd")])
def test_label_values_outside_the_classes(tmp_path, make, value, reader):
    if reader == "voc":
        make.voc(tmp_path)
        path = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png"
        label = make.labels(0, 21)
        label[3, 4] = value
        make.save_palette_png(path, label)
    elif reader == "camvid":
        path = make.camvid(tmp_path) / "trainannot" / "0001TP_006690.png"
        label = make.labels(0, 11)
        label[3, 4] = value
        make.save_gray_png(path, label)
    else:
        make.sbd(tmp_path)
        path = tmp_path / "benchmark_RELEASE/dataset/cls/2008_000002.mat"
        label = make.labels(0, 21)
        label[3, 4] = value
        make.save_mat(path, {"GTcls": {"Segmentation": label}})
    dataset = build_dataset(reader, root=tmp_path, split="train")
    with pytest.raises(DatasetError) as error:
        dataset[0]
    one_line(error, path, f"value {value}", "1 pixels")


def test_label_map_names_the_valid_values():
    label_map = LabelMap.identity(11, ignore=(11, 255), name="CamVid")
    assert label_map.valid_values() == "0-11, 255"
    out = label_map(np.array([[0, 11], [255, 10]], dtype=np.uint8), "x.png")
    assert out.tolist() == [[0, 255], [255, 10]]
    signed = LabelMap({-1: 255, 0: 255, 1: 0}, name="geo")
    assert signed(np.array([[-1, 0, 1]]), "g.mat").tolist() == [[255, 255, 0]]
    with pytest.raises(DatasetError, match="value 2 "):
        signed(np.array([[2]]), "g.mat")
    with pytest.raises(DatasetError, match="non-integer"):
        signed(np.array([[0.5]]), "g.mat")


def test_colour_mask_with_unknown_colour(tmp_path, make):
    make.folder(tmp_path, colour_masks=True)
    path = tmp_path / "masks" / "b.png"
    mask = np.zeros((12, 16, 3), np.uint8)
    mask[5, 5] = (12, 34, 56)
    make.save_rgb(path, mask)
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)[1]
    one_line(error, path, "(12, 34, 56)", "1 pixels")
    with pytest.raises(DatasetError, match="not in the class palette"):
        colors_to_indices(mask, [(0, 0, 0)], [0], "m.png")


def test_colour_mask_without_class_colours(tmp_path, make):
    make.folder(tmp_path)
    (tmp_path / "classes.txt").write_text("background\nroad\ntree\n")
    make.save_rgb(tmp_path / "masks" / "a.png", np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)[0]
    one_line(error, tmp_path / "masks" / "a.png", "colour (RGB)")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "names no classes"),
        ("a 1 2 3\nb\n", "has no colour"),
        ("a 1 2 3\nb 1 2 3\n", "share"),
        ("ignore\na\n", "'ignore' needs a colour"),
        ("a 1 2 300\n", "above 255"),
        ("a\nb\na 1 2 3\n", "line 3: class 'a' is already named on line 1"),
        ("caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_bad_classes_file(tmp_path, make, text, fragment):
    make.folder(tmp_path)
    if isinstance(text, bytes):
        (tmp_path / "classes.txt").write_bytes(text)
    else:
        (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(DatasetError) as error:
        FolderDataset(tmp_path)
    one_line(error, "classes.txt", fragment)


def test_unknown_dataset_and_missing_root():
    with pytest.raises(DatasetError) as error:
        build_dataset("imagenet", root=".")
    one_line(error, "imagenet", "camvid", "synthetic")
    with pytest.raises(DatasetError) as error:
        build_dataset("voc")
    one_line(error, "root=")
    with pytest.raises(DatasetError, match="takes no root"):
        build_dataset("synthetic", root=".")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("voc")(VOCSegmentation)
    assert {
        "voc",
        "sbd",
        "seg11valid",
        "camvid",
        "siftflow",
        "nyud",
        "context",
        "cityscapes",
        "coco",
        "folder",
        "synthetic",
    } == set(list_datasets())


# ---------------------------------------------------------------------------------------------
# Odd but valid images


def folder_with_image(tmp_path, make, image: Image.Image, label: np.ndarray, suffix=".png"):
    make.folder(tmp_path)
    for path in (tmp_path / "images").iterdir():
        path.unlink()
    (tmp_path / "masks" / "b.png").unlink()
    image.save(tmp_path / "images" / f"a{suffix}")
    make.save_gray_png(tmp_path / "masks" / "a.png", label)
    return FolderDataset(tmp_path)


def test_grayscale_image_becomes_three_equal_channels(tmp_path, make):
    gray = make.rgb(1)[..., 0]
    image, _ = folder_with_image(tmp_path, make, Image.fromarray(gray, "L"), make.labels(0, 3))[0]
    assert image.shape == (3, 12, 16)
    assert all(torch.equal(image[c], torch.from_numpy(gray).float()) for c in range(3))


def test_rgba_image_drops_alpha(tmp_path, make):
    rgba = np.dstack([make.rgb(2), np.full((12, 16), 7, np.uint8)])
    image, _ = folder_with_image(tmp_path, make, Image.fromarray(rgba, "RGBA"), make.labels(0, 3))[
        0
    ]
    assert torch.equal(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float())


def test_16_bit_image_is_scaled_to_8_bits(tmp_path, make):
    deep = (np.arange(12 * 16).reshape(12, 16) * 340).astype(np.uint16)
    image, _ = folder_with_image(tmp_path, make, Image.fromarray(deep), make.labels(0, 3))[0]
    assert torch.allclose(image[1], torch.from_numpy(np.rint(deep / 257.0)).float())
    assert image.max() > 250


def test_palette_image_is_converted_to_rgb(tmp_path, make):
    palette_image = Image.fromarray(make.labels(1, 4), "P")
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    image, _ = folder_with_image(tmp_path, make, palette_image, make.labels(0, 3))[0]
    expected = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])[make.labels(1, 4)]
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)


def exif_rotated(display: np.ndarray) -> Image.Image:
    """Stored pixels plus EXIF orientation 6 (show rotated 90 degrees clockwise)."""
    stored = Image.fromarray(np.rot90(display, k=1).copy())  # undo a clockwise turn
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.info["exif"] = exif.tobytes()
    return stored


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_rotated_image_turns_upright_with_its_label(tmp_path, make, suffix):
    display = np.zeros((12, 16, 3), np.uint8)
    display[:, 8:] = 255  # right half white as the annotator saw it
    label = np.zeros((12, 16), np.uint8)
    label[:, 8:] = 1
    stored = exif_rotated(display)
    assert stored.size == (12, 16)  # stored 12 wide, 16 high
    make.folder(tmp_path)
    path = tmp_path / "images" / f"a{suffix}"
    for old in (tmp_path / "images").iterdir():
        old.unlink()
    (tmp_path / "masks" / "b.png").unlink()
    stored.save(path, exif=stored.info["exif"], **({"quality": 100} if suffix == ".jpg" else {}))
    make.save_gray_png(tmp_path / "masks" / "a.png", label)
    image, read_label = FolderDataset(tmp_path)[0]
    assert image.shape == (3, 12, 16)
    assert image[:, :, :7].max() < 30 and image[:, :, 9:].min() > 225  # aligned with the label
    assert torch.equal(read_label, torch.from_numpy(label).long())


def test_exif_ignored_when_label_matches_the_stored_pixels(tmp_path):
    display = np.zeros((12, 16, 3), np.uint8)
    stored = exif_rotated(display)
    path = tmp_path / "x.png"
    stored.save(path, exif=stored.info["exif"])
    assert read_image(path).shape == (12, 16, 3)  # upright
    assert read_image(path, match=(16, 12)).shape == (16, 12, 3)  # label drawn on stored pixels
