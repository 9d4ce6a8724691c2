"""COCO-style annotations read as class masks (issue 30 item 5): polygons and run-length
encodings (lists and pycocotools' compressed strings), crowds ignored, the layouts of COCO,
CVAT and Roboflow, and training on an export made from real CamVid frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from own_data import CLASSES, camvid_frames, needs_camvid

from fcnseg.data import DatasetError, build_dataset
from fcnseg.data.coco import decode_rle, polygon_mask

# masks whose compressed counts pycocotools 2.0.11 wrote (mask.encode)
SMALL = np.zeros((6, 7), bool)
SMALL[1:4, 2:6] = True
SMALL[5, 0] = SMALL[0, 6] = True
SMALL_COUNTS = "5172L00000ON3"
RING = np.zeros((40, 50), bool)
RING[5:30, 10:45] = True
RING[12:20, 20:30] = False
RING_COUNTS = "e<i0?000000000000000000^OI37MI37MI37MI37MI37MI37MI37MI37MI37MI37?0000000000000000000000000000S6"  # fmt: skip


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts: runs of 0s and 1s in column-major order, 0s first."""
    flat = mask.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def test_run_lengths_decode_as_pycocotools_wrote_them():
    assert np.array_equal(decode_rle(SMALL_COUNTS, 6, 7), SMALL)
    assert np.array_equal(decode_rle(RING_COUNTS, 40, 50), RING)
    assert np.array_equal(decode_rle(rle_counts(RING), 40, 50), RING)
    with pytest.raises(DatasetError, match="cover 41 pixels, not 6x7"):
        decode_rle([40, 1], 6, 7)


def test_a_polygon_takes_the_pixels_whose_centre_it_holds():
    square = polygon_mask([1, 1, 4, 1, 4, 3, 1, 3], 5, 6)
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:4] = True
    assert np.array_equal(square, expected)
    assert not polygon_mask([10, 10, 12, 10, 12, 12], 5, 6).any()  # outside the image


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own, under numpy 2
def test_against_pycocotools_where_installed():
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    masks = (rng.random((5, 30, 40)) > 0.5).astype(np.uint8)
    for mask in masks:
        encoded = coco_mask.encode(np.asfortranarray(mask))
        assert np.array_equal(decode_rle(encoded["counts"].decode(), 30, 40), mask.astype(bool))
    differ = total = 0
    for _ in range(20):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(6, 14, 9)
        polygon = np.stack([20 + radii * np.cos(angles), 15 + radii * np.sin(angles)], 1)
        points = polygon.ravel().round(2).tolist()
        theirs = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([points], 30, 40)))
        differ += int((polygon_mask(points, 30, 40) != theirs.astype(bool)).sum())
        total += int(theirs.sum())
    assert differ / total < 0.02  # edge pixels whose centre lies on the line


def _export(root: Path, frames, layout: str) -> Path:
    """A COCO export of CamVid frames: each class region one RLE object (category ids 10,
    20, ..., listed in reverse: their ids order the classes), a crowd box on the first
    frame, and a polygon object on the second."""
    images_dir = {"coco": root / "val2017", "cvat": root / "images", "roboflow": root / "valid"}[layout]  # fmt: skip
    images_dir.mkdir(parents=True)
    categories = [{"id": 10 * (k + 1), "name": name} for k, name in enumerate(CLASSES)]
    content = {"images": [], "annotations": [], "categories": categories[::-1]}
    for number, (stem, image, labels) in enumerate(frames):
        image.save(images_dir / f"{stem}.jpg", quality=95)
        height, width = labels.shape
        content["images"].append({"id": number + 1, "file_name": f"{stem}.jpg", "width": width, "height": height})  # fmt: skip
        for k in np.unique(labels[labels < len(CLASSES)]):
            region = labels == k
            content["annotations"].append({
                "id": len(content["annotations"]) + 1, "image_id": number + 1,
                "category_id": categories[k]["id"], "iscrowd": 0, "area": int(region.sum()),
                "segmentation": {"size": [height, width], "counts": rle_counts(region)},
            })  # fmt: skip
    content["annotations"].append({
        "id": 900, "image_id": 1, "category_id": categories[0]["id"], "iscrowd": 1, "area": 4,
        "segmentation": {"size": [height, width], "counts": rle_counts(_box(height, width))},
    })  # fmt: skip
    content["annotations"].append({
        "id": 901, "image_id": 2, "category_id": categories[8]["id"], "iscrowd": 0, "area": 1,
        "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]],
    })  # fmt: skip
    target = {
        "coco": root / "annotations" / "instances_val2017.json",
        "cvat": root / "annotations" / "instances_default.json",
        "roboflow": root / "valid" / "_annotations.coco.json",
    }[layout]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(content))
    return target


def _box(height: int, width: int) -> np.ndarray:
    box = np.zeros((height, width), bool)
    box[2:4, 5:7] = True
    return box


@needs_camvid
@pytest.mark.parametrize(("layout", "split"), [("coco", "val2017"), ("cvat", "default"), ("roboflow", "valid")])  # fmt: skip
def test_an_export_of_camvid_reads_back_as_its_masks(tmp_path, layout, split):
    frames = camvid_frames(3)
    _export(tmp_path / "export", frames, layout)
    dataset = build_dataset("coco", root=tmp_path / "export", split=split)
    assert dataset.classes == ("background", *CLASSES)
    assert dataset.ids == [stem for stem, _, _ in frames]
    for index, (_, _, labels) in enumerate(frames):
        expected = np.where(labels < len(CLASSES), labels + 1, 0)  # void: no object, background
        if index == 0:
            expected[_box(*labels.shape)] = 255
        if index == 1:
            expected[1:3, 1:4] = 9  # the polygon object (Car) on top of the regions
        image, got = dataset[index]
        assert np.array_equal(got.numpy(), expected), index
        assert tuple(image.shape[1:]) == labels.shape


def test_missing_files_and_bad_references_are_one_line(tmp_path):
    (tmp_path / "export").mkdir()
    with pytest.raises(DatasetError, match="looked for annotations/instances_train.json"):
        build_dataset("coco", root=tmp_path / "export", split="train")
    path = tmp_path / "export" / "annotations" / "instances_train.json"
    path.parent.mkdir()
    (tmp_path / "export" / "train").mkdir()
    content = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 1, "name": "car"}],
        "annotations": [{"id": 7, "image_id": 2, "category_id": 1, "segmentation": []}],
    }
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="annotation 7 refers to image 2"):
        build_dataset("coco", root=tmp_path / "export", split="train")
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot be read as JSON"):
        build_dataset("coco", root=tmp_path / "export", split="train")


@needs_camvid
def test_train_and_eval_on_a_coco_export(tmp_path, fcnseg_main, file_hashes):
    _export(tmp_path / "export", camvid_frames(4), "coco")
    before = file_hashes(tmp_path / "export")
    tiny = ["max_iters=2", "batch_size=2", "crop_size=32", "threads=1", "num_workers=0"]
    tiny += ["overlays=0", "pretrained_backbone=false", "model=fcn32s_efficientnet_lite0"]
    data = ["dataset=coco", f"root={tmp_path / 'export'}", "train_split=val2017", "val_split=val2017"]  # fmt: skip
    result = fcnseg_main("train", *data, f"output={tmp_path / 'runs'}", "name=coco", *tiny)
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "runs" / "coco" / "last.pt"
    result = fcnseg_main("eval", "--checkpoint", checkpoint, "--data", "coco", "--root", tmp_path / "export", "--split", "val2017", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mean IU" in result.stdout and "background" in result.stdout
    assert file_hashes(tmp_path / "export") == before
