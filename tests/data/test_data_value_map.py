"""Folder masks whose stored values are not the class indices (issue 13).

A 2-class folder dataset saved as 0/255 binary masks would train with every foreground
pixel ignored (255 is the ignore index) and report mean IU 100: it is refused in one line
that names the fix, ``value_map`` maps raw values to classes, and a class that never occurs
in the scanned masks is a one-line warning.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from fcnseg.config import ConfigError, load_config
from fcnseg.data import DatasetError, FolderDataset

SIZE = 32


def make_binary(root, splits=("train", "val"), foreground=255):
    """classes.txt with background and object; masks 0 / ``foreground`` per split folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nobject\n")
    rng = np.random.default_rng(0)
    for split in splits:
        for n in range(2):
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[8:24, 4 + n : 20 + n] = foreground
            _save(root / "images" / split / f"{n}.png", image)
            _save(root / "masks" / split / f"{n}.png", mask)
    return root


def _save(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _config(tmp_path, root, **extra):
    config = {
        "model": "fcn32s_efficientnet_lite0",
        "dataset": "folder",
        "root": str(root),
        "max_iters": 1,
        "batch_size": 2,
        "num_workers": 0,
        "threads": 1,
        "overlays": 0,
        "scale_range": None,
        "jitter": False,
        "device": "cpu",
        "output": str(tmp_path / "runs"),
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_binary_255_masks_are_refused_in_one_line(
    tmp_path, fcnseg_main, file_hashes, one_line_error
):
    root = make_binary(tmp_path / "data")
    before = file_hashes(root)
    result = fcnseg_main("train", "--config", _config(tmp_path, root))
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("fcnseg: error: ") and "255" in line and "no 1" in line
    assert "value_map = {0 = 0, 255 = 1}" in line
    assert file_hashes(root) == before


def test_value_map_makes_255_the_foreground_class(tmp_path, fcnseg_main, file_hashes):
    root = make_binary(tmp_path / "data")
    before = file_hashes(root)
    value_map = {"0": 0, "255": 1}  # TOML and JSON keys are strings
    config = _config(
        tmp_path, root, train_options={"value_map": value_map}, val_options={"value_map": value_map}
    )
    result = fcnseg_main("train", "--config", config)
    assert result.returncode == 0, result.stderr
    assert file_hashes(root) == before
    _, label = FolderDataset(root, "train", value_map={0: 0, 255: 1})[0]
    assert set(label.unique().tolist()) == {0, 1}


def test_value_map_can_also_ignore_a_value(tmp_path):
    root = make_binary(tmp_path, splits=("train",))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:4] = 128  # a border the annotator left undecided
    mask[8:] = 255
    _save(root / "masks" / "train" / "0.png", mask)
    dataset = FolderDataset(root, "train", value_map={0: 0, 128: 255, 255: 1})
    label = dataset[0][1].numpy()
    assert (label[:4] == 255).all() and (label[8:] == 1).all() and (label[4:8] == 0).all()


@pytest.mark.parametrize(
    ("value_map", "fragment"),
    [
        ({0: 0, 255: 2}, "class 2"),
        ({"zero": 0, 255: 1}, "'zero'"),
        ({0: 0, -1: 1}, "-1"),
        ({0: "one"}, "'one'"),
    ],
)
def test_bad_value_maps_are_one_line(tmp_path, value_map, fragment):
    root = make_binary(tmp_path, splits=("train",))
    with pytest.raises(DatasetError) as error:
        FolderDataset(root, "train", value_map=value_map)
    message = str(error.value)
    assert "\n" not in message and "value_map" in message and fragment in message


def test_a_value_outside_the_value_map_names_the_file(tmp_path):
    root = make_binary(tmp_path, splits=("train",))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[0, :3] = 128  # anti-aliased edge pixels
    _save(root / "masks" / "train" / "1.png", mask)
    with pytest.raises(DatasetError, match=r"1\.png holds value 128 \(3 pixels\)"):
        FolderDataset(root, "train", value_map={0: 0, 255: 1})


def test_a_class_missing_from_the_scanned_masks_is_a_one_line_warning(
    tmp_path, fcnseg_main, file_hashes
):
    root = make_binary(tmp_path / "data", foreground=1)
    (root / "classes.txt").write_text("background\nobject\nshadow\n")
    with pytest.warns(UserWarning, match="class 'shadow' \\(2\\) never occurs in the 2 train"):
        FolderDataset(root, "train")
    before = file_hashes(root)
    result = fcnseg_main("train", "--config", _config(tmp_path, root))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "shadow" in line]
    assert len(lines) == 2 and all(line.startswith("fcnseg: warning: ") for line in lines)
    assert "Traceback" not in result.stderr and "warnings.warn" not in result.stderr
    assert file_hashes(root) == before


def test_binary_masks_with_1_as_foreground_read_without_warnings(tmp_path):
    root = make_binary(tmp_path, foreground=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = FolderDataset(root, "val")
    assert set(dataset[1][1].unique().tolist()) == {0, 1}


def test_masks_mixing_1_and_255_as_foreground_are_refused_naming_one_of_each(
    tmp_path, make_checkpoint, fcnseg_main, file_hashes, one_line_error
):
    """Half the masks 0/1, half 0/255: the 255 half's foreground would be ignored."""
    root = make_binary(tmp_path / "data", splits=("val",), foreground=1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    _save(root / "masks" / "val" / "1.png", mask)
    checkpoint = make_checkpoint(tmp_path / "model.pt", ["background", "object"])
    before = file_hashes(root)
    command = ("eval", "--checkpoint", checkpoint, "--data", "folder", "--root", root,
               "--workers", "0", "--device", "cpu", "--out", tmp_path / "metrics.json")  # fmt: skip
    result = fcnseg_main(*command)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    masks = root / "masks" / "val"
    assert f"mask {masks / '1.png'} holds 255 and no 1 while mask {masks / '0.png'} holds 1" in line
    assert "value_map={0=0,1=1,255=1}" in line and "{0 = 0, 1 = 1, 255 = 255}" in line
    assert file_hashes(root) == before
    result = fcnseg_main(*command, "--option", "value_map={0=0,1=1,255=1}")
    assert result.returncode == 0, result.stderr
    assert file_hashes(root) == before


def test_an_explicit_value_map_lets_255_mean_ignored_beside_masks_with_1(tmp_path):
    root = make_binary(tmp_path, splits=("val",), foreground=1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:4] = 255  # a region the annotator left out, in an image without the object
    _save(root / "masks" / "val" / "1.png", mask)
    dataset = FolderDataset(root, "val", value_map={0: 0, 1: 1, 255: 255})
    assert set(dataset[1][1].unique().tolist()) == {0, 255}


def _index_masks(root, values):
    """A 3-class folder (images/, masks/, classes.txt) whose one mask holds ``values``."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for row, value in enumerate(values):
        mask[4 * row : 4 * row + 4] = value
    _save(root / "masks" / "0.png", mask)
    _save(root / "images" / "0.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    return root


def test_a_partial_value_map_keeps_the_values_it_does_not_list(tmp_path):
    """Issue 30: a value_map lists only what differs; class values and 255 keep theirs."""
    root = _index_masks(tmp_path, [0, 1, 2, 7, 255])
    label = FolderDataset(root, value_map={7: 2})[0][1].numpy()
    assert [int(label[4 * row, 0]) for row in range(5)] == [0, 1, 2, 2, 255]


@pytest.mark.filterwarnings("ignore:.*never occurs")
def test_ignore_index_names_the_value_that_means_ignored(tmp_path):
    root = _index_masks(tmp_path, [0, 1, 2, 11])
    label = FolderDataset(root, ignore_index=11)[0][1].numpy()
    assert [int(label[4 * row, 0]) for row in range(4)] == [0, 1, 2, 255]
    both = FolderDataset(root, ignore_index=[11, 12], value_map={2: 1})[0][1].numpy()
    assert [int(both[4 * row, 0]) for row in range(4)] == [0, 1, 1, 255]


def test_a_value_no_key_explains_names_both_keys(tmp_path):
    root = _index_masks(tmp_path, [0, 1, 11])
    with pytest.raises(DatasetError) as error:
        FolderDataset(root)
    message = str(error.value)
    assert "\n" not in message and "holds value 11" in message
    assert message.endswith(
        "map it to a class with value_map = {11 = C}, or ignore it with ignore_index = 11 (in "
        "the config, or --option on fcnseg eval)"
    )


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"ignore_index": 1}, "ignore_index 1 is class 'road'"),
        ({"ignore_index": 11, "value_map": {11: 2}}, "ignore_index 11 is also a key of value_map"),
        ({"ignore_index": -3}, "ignore_index -3 is not a mask value"),
    ],
)
def test_bad_ignore_indices_are_one_line(tmp_path, options, fragment):
    root = _index_masks(tmp_path, [0, 1, 11])
    with pytest.raises(DatasetError, match=fragment):
        FolderDataset(root, **options)


def test_colour_masks_refuse_ignore_index(tmp_path):
    root = _index_masks(tmp_path, [0])
    (root / "classes.txt").write_text("sky 0 0 0\nroad 1 1 1\n")
    with pytest.raises(DatasetError, match="ignore_index is for index masks.*'ignore R G B'"):
        FolderDataset(root, ignore_index=11)


def test_top_level_value_map_and_ignore_index_serve_both_sets(tmp_path, fcnseg_main):
    """``ignore_index=11`` and ``value_map`` at the top level of a config or as overrides
    land in train_options and val_options; given twice with two values is one line."""
    config = load_config(None, ["dataset=folder", "root=x", "ignore_index=11", "value_map={7=2}"])
    assert config.train_options == config.val_options == {"ignore_index": 11, "value_map": {"7": 2}}
    path = tmp_path / "c.toml"
    path.write_text('dataset = "folder"\nroot = "x"\nignore_index = 11\n')
    assert load_config(path).val_options == {"ignore_index": 11}
    assert load_config(path, ["ignore_index=12"]).train_options == {"ignore_index": 12}
    path.write_text(
        'dataset = "folder"\nignore_index = 11\ntrain_options = { ignore_index = 12 }\n'
    )
    with pytest.raises(
        ConfigError, match="ignore_index is given twice, at the top level and in train_options"
    ):
        load_config(path)
    root = _index_masks(tmp_path / "data", [0, 1, 2, 11])
    for folder in ("images", "masks"):  # two images: a batch norm needs two to train
        shutil.copy(root / folder / "0.png", root / folder / "1.png")
    result = fcnseg_main("train", "--run-dir", tmp_path / "run", f"root={root}", "split=none",
                         "ignore_index=11", "model=fcn32s_efficientnet_lite0",
                         "pretrained_backbone=false", "max_iters=1", "batch_size=2", "threads=1",
                         "num_workers=0", "crop_size=32", "overlays=0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train_options"] == saved["val_options"] == {"ignore_index": 11}
