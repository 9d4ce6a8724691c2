"""The folder reader on the layouts people download (issue 30): mmsegmentation's folder and
suffix options, masks beside their photos, Cityscapes' per-city subfolders; and what an
image without its mask says was found instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.config import load_config
from fcnseg.data import DatasetError, build_dataset

CLASSES = "sky\nroad\ncar\n"


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, (12, 16), dtype=np.uint8)


def _dataset(root: Path, split: str | None = None, **options):
    return build_dataset("folder", root=root, split=split, **options)


def _beside(root: Path) -> Path:
    """x.jpg and x_mask.png side by side in images/."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(CLASSES)
    for seed in range(3):
        _write(root / "images" / f"street_{seed}.jpg", _photo(seed))
        _write(root / "images" / f"street_{seed}_mask.png", _mask(seed))
    return root


def _cityscapes(root: Path) -> Path:
    """leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/ with the
    label, colour and polygon files of each."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(CLASSES)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for seed, city in enumerate(cities):
            name = f"{city}_000000_00001{seed}"
            _write(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", _photo(seed))
            labels = root / "gtFine" / split / city
            _write(labels / f"{name}_gtFine_labelTrainIds.png", _mask(seed))
            _write(labels / f"{name}_gtFine_color.png", _photo(seed + 10))
            (labels / f"{name}_gtFine_polygons.json").write_text("{}")
    return root


CITYSCAPES = {
    "img_dir": "leftImg8bit",
    "ann_dir": "gtFine",
    "img_suffix": "_leftImg8bit.png",
    "seg_map_suffix": "_gtFine_labelTrainIds.png",
}


def test_masks_beside_their_photos_pair_by_suffix(tmp_path):
    root = _beside(tmp_path / "data")
    dataset = _dataset(root, ann_dir="images", seg_map_suffix="_mask.png")
    assert [sample.id for sample in dataset.samples] == ["street_0", "street_1", "street_2"]
    assert dataset.samples[1].label.name == "street_1_mask.png"
    image, labels = dataset[1]
    assert np.array_equal(labels.numpy(), _mask(1))


def test_without_the_suffix_the_error_names_what_was_found(tmp_path):
    root = tmp_path / "data"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text(CLASSES)
    _write(root / "images" / "x.png", _photo(0))
    _write(root / "masks" / "x_mask.png", _mask(0))
    with pytest.raises(DatasetError) as error:
        _dataset(root)
    message = str(error.value)
    assert "has no mask" in message and "found x_mask.png: set seg_map_suffix = '_mask.png'" in message  # fmt: skip
    assert "\n" not in message
    with pytest.raises(DatasetError, match="share the folder: set seg_map_suffix"):
        _dataset(_beside(tmp_path / "beside"), ann_dir="images")


def test_cityscapes_reads_per_city_subfolders_by_split(tmp_path):
    root = _cityscapes(tmp_path / "cityscapes")
    train = _dataset(root, "train", **CITYSCAPES)
    assert [s.id for s in train.samples] == ["aachen/aachen_000000_000010", "bochum/bochum_000000_000011"]  # fmt: skip
    assert all(s.label.name.endswith("_gtFine_labelTrainIds.png") for s in train.samples)
    assert np.array_equal(train[1][1].numpy(), _mask(1))
    val = _dataset(root, "val", **CITYSCAPES)
    assert [s.id for s in val.samples] == ["frankfurt/frankfurt_000000_000010"]
    with pytest.raises(DatasetError) as error:
        _dataset(root, "train", img_dir="leftImg8bit", ann_dir="gtFine")
    assert (
        "set img_suffix = '_leftImg8bit.png' and seg_map_suffix = '_gtFine_labelTrainIds.png'"
        in str(error.value)
    )


def test_nested_folders_are_searched_and_a_split_file_names_their_paths(tmp_path):
    root = tmp_path / "data"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text(CLASSES)
    for seed, name in enumerate(("day/a", "day/b", "night/a")):
        _write(root / "images" / f"{name}.jpg", _photo(seed))
        _write(root / "masks" / f"{name}.png", _mask(seed))
    everything = _dataset(root)
    assert [s.id for s in everything.samples] == ["day/a", "day/b", "night/a"]
    (root / "val.txt").write_text("night/a\n")
    assert [s.id for s in _dataset(root, "val").samples] == ["night/a"]
    (root / "val.txt").write_text("night/zzz\n")
    with pytest.raises(DatasetError, match="lists 'night/zzz', which has no image"):
        _dataset(root, "val")


def test_the_options_come_from_the_command_line_and_a_config(tmp_path):
    config = load_config(
        None, ["dataset=folder", "root=data", "ann_dir=images", "seg_map_suffix=_mask.png"]
    )
    for options in (config.train_options, config.val_options):
        assert options == {"ann_dir": "images", "seg_map_suffix": "_mask.png"}
    path = tmp_path / "cityscapes.toml"
    path.write_text(
        'dataset = "folder"\n'
        + "".join(f'{key} = "{value}"\n' for key, value in CITYSCAPES.items())
    )
    assert load_config(path).train_options == CITYSCAPES


def test_train_on_photos_with_masks_beside_them(tmp_path, fcnseg_main, file_hashes):
    root = _beside(tmp_path / "data")
    before = file_hashes(root)
    common = ["train", f"root={root}", f"output={tmp_path / 'runs'}", "name=beside"]
    tiny = ["max_iters=2", "batch_size=2", "crop_size=12", "threads=1", "num_workers=0"]
    tiny += ["overlays=0", "pretrained_backbone=false", "model=fcn32s_efficientnet_lite0"]
    result = fcnseg_main(*common, *tiny)
    assert result.returncode != 0
    assert "found street_0_mask.png" not in result.stderr  # beside: the folder is the problem
    assert "masks folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = fcnseg_main(*common, *tiny, "ann_dir=images", "seg_map_suffix=_mask.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "beside" / "last.pt").is_file()
    assert file_hashes(root) == before
