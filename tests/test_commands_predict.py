"""``fcnseg predict``: files, folders and globs in; index PNGs and overlays out."""

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import SYNTHETIC_CLASSES, voc_palette
from fcnseg.modelfile import record_of
from fcnseg.training import checkpoint as ckpt
from fcnseg.viz import overlay

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=7)
    with torch.no_grad():
        model.head.score_pool3.weight.normal_(0, 0.1)  # varied predictions
    path = tmp_path_factory.mktemp("model") / "model.pt"
    record = record_of(model, classes=SYNTHETIC_CLASSES, palette=voc_palette(7))
    return ckpt.save_checkpoint(record, path)


def _image(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def test_predict_files_folders_globs_and_report_failures(checkpoint, tmp_path, capsys):
    _image(tmp_path / "folder" / "a.png", 40, 60)
    _image(tmp_path / "folder" / "b.jpg", 33, 21, seed=1)
    (tmp_path / "folder" / "notes.txt").write_text("not an image")
    _image(tmp_path / "more" / "a.png", 25, 25, seed=2)  # same name as folder/a.png
    _image(tmp_path / "globbed" / "c.png", 30, 30, seed=3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    inputs = [
        str(tmp_path / "folder"),
        str(tmp_path / "more" / "a.png"),
        str(tmp_path / "globbed" / "*.png"),
        str(tmp_path / "broken.png"),
        str(tmp_path / "missing.jpg"),
    ]
    code = main(["predict", "--checkpoint", str(checkpoint), *inputs, "--out", str(out), "--probabilities"])  # fmt: skip
    assert code == 1  # some inputs failed; the others were still processed
    stdout = capsys.readouterr().out
    assert "4 image(s) predicted" in stdout
    tail = stdout[stdout.index("2 input(s) failed:") :]
    assert "broken.png: image" in tail and "cannot be decoded" in tail
    assert "missing.jpg: no such file or folder" in tail
    sizes = {"a": (60, 40), "b": (21, 33), "a-2": (25, 25), "c": (30, 30)}
    sources = {"a": "folder/a.png", "b": "folder/b.jpg", "a-2": "more/a.png", "c": "globbed/c.png"}
    for stem, size in sizes.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == size
        assert np.asarray(mask).max() < 7
        assert mask.getpalette()[3:6] == [128, 0, 0]  # the dataset's palette
        # the overlay pixel for pixel in the top-left corner, a legend below, 240 px wide
        picture = np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB"))
        width, height = size
        image = np.asarray(Image.open(tmp_path / sources[stem]).convert("RGB"))
        expected = overlay(image, np.asarray(mask), voc_palette(7), classes=SYNTHETIC_CLASSES)
        assert picture.shape == (picture.shape[0], 240, 3) and picture.shape[0] > height + 10
        assert np.array_equal(picture[:height, :width], expected)
        assert (picture[height:] < 128).any()  # the legend's text and swatches
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (7, size[1], size[0])
        chosen = np.take_along_axis(probs, np.asarray(mask)[None].astype(np.int64), 0)[0]
        assert probs.dtype == np.float32 and np.allclose(chosen, probs.max(0), atol=1e-6)


def test_unwritable_output_folder_is_a_clear_error(checkpoint, tmp_path, capsys):
    image = _image(tmp_path / "x.png", 16, 16)
    (tmp_path / "file").write_text("a file, not a folder")
    code = main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "file" / "out")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and "choose another --out" in err


def test_no_overlay_and_all_good_inputs_exit_zero(checkpoint, tmp_path, capsys):
    image = _image(tmp_path / "x.png", 16, 24)
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o"), "--no-overlay"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x.png"]


@pytest.mark.slow
@pytest.mark.onnx
def test_predict_runs_an_exported_onnx_model(checkpoint, tmp_path, capsys):
    """The same masks from the checkpoint and from its ONNX export (issue: predict on ONNX)."""
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_onnx

    onnx_path = tmp_path / "model.onnx"
    export_onnx(fcnseg.Segmenter.from_checkpoint(checkpoint).model, onnx_path)
    image = _image(tmp_path / "in" / "photo.png", 45, 70, seed=3)
    assert main(["predict", "--checkpoint", str(onnx_path), str(image), "--out", str(tmp_path / "onnx")]) == 0  # fmt: skip
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "pt")]) == 0  # fmt: skip
    from_onnx = np.array(Image.open(tmp_path / "onnx" / "photo.png"))
    from_pt = np.array(Image.open(tmp_path / "pt" / "photo.png"))
    assert from_onnx.shape == (45, 70)
    assert (from_onnx == from_pt).mean() > 0.999  # float ties may flip a pixel
    assert len(np.unique(from_pt)) > 1


def test_predicting_into_the_input_folder_keeps_every_photo(
    checkpoint, tmp_path, fcnseg_main, file_hashes
):
    """--out is the input folder: no photo is replaced by its mask, and a second run reads
    the photos again, not the masks and overlays the first run wrote (issue 13)."""
    photos = tmp_path / "photos"
    _image(photos / "a.png", 20, 24)
    _image(photos / "b.jpg", 16, 16, seed=1)
    _image(photos / "b-2.png", 18, 12, seed=2)  # a user's name in the form used for duplicates
    (photos / "notes.txt").write_text("the user's own file")
    before = file_hashes(photos)
    for _ in range(2):
        result = fcnseg_main("predict", "--checkpoint", checkpoint, photos, "--out", photos)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert "3 image(s) predicted" in result.stdout
        assert {
            path: digest for path, digest in file_hashes(photos).items() if path in before
        } == before
    names = sorted(path.name for path in photos.iterdir())
    assert not any("_overlay_overlay" in name for name in names)
    masks = [line.split(" -> ")[1] for line in result.stdout.splitlines() if " -> " in line]
    assert len(set(masks)) == 3 and not set(masks) & {str(path) for path in before}
    for mask in masks:
        assert Image.open(mask).mode == "P"


def test_predict_does_not_overwrite_a_users_file_in_the_output_folder(
    checkpoint, tmp_path, fcnseg_main, file_hashes
):
    image = _image(tmp_path / "in" / "x.jpg", 16, 16)
    out = tmp_path / "out"
    _image(out / "x.png", 10, 10, seed=5)  # the user's own picture, not an input
    (out / "x_overlay.png").write_bytes(b"not ours either")
    before = file_hashes(out)
    result = fcnseg_main("predict", "--checkpoint", checkpoint, image, "--out", out)
    assert result.returncode == 0, result.stderr
    assert {path: file_hashes(out)[path] for path in before} == before
    assert f"{image} -> {out / 'x-2.png'}" in result.stdout
    assert Image.open(out / "x-2.png").size == (16, 16)


def test_a_full_disk_is_reported_per_image_and_the_others_are_written(
    checkpoint, tmp_path, capsys, monkeypatch, file_hashes
):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        _image(tmp_path / "in" / f"{name}.png", 20, 20, seed=seed)
    before = file_hashes(tmp_path / "in")
    write_bytes = Path.write_bytes

    def full_for_b(self, data):
        if str(self).startswith(str(tmp_path / "out" / ".b")):  # b's temporary file
            write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_b)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out)]) == 1  # fmt: skip
    stdout = capsys.readouterr().out
    assert "2 image(s) predicted" in stdout and "1 input(s) failed:" in stdout
    assert f"b.png: could not write {out / 'b.png'} (no space left on the disk)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png", "c.png", "c_overlay.png"]  # fmt: skip
    assert file_hashes(tmp_path / "in") == before


def test_a_progress_bar_over_many_images_on_a_terminal_only(
    checkpoint, tmp_path, capsys, monkeypatch
):
    for seed in range(3):
        _image(tmp_path / "photos" / f"{seed}.png", 24, 32, seed=seed)
    args = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "photos"), "--no-overlay"]
    assert main([*args, "--out", str(tmp_path / "piped")]) == 0
    piped = capsys.readouterr()
    assert "predict:" not in piped.out + piped.err and piped.out.count(" -> ") == 3
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main([*args, "--out", str(tmp_path / "shown")]) == 0
    shown = capsys.readouterr().out
    assert "predict: 100%" in shown and "3/3" in shown and shown.count(" -> ") == 3


@pytest.mark.slow
def test_a_recursive_glob_predicts_each_real_image_once_through_looping_links(
    checkpoint, tmp_path, fcnseg_cli, file_hashes
):
    """A link to its own folder and one to its parent: glob.glob would walk them round and
    round; each real image is predicted once, however many paths reach it."""
    images = tmp_path / "images"
    _image(images / "a.png", 16, 16)
    _image(images / "sub" / "b.png", 16, 16, seed=1)
    (images / "self").symlink_to(".")
    (images / "sub" / "up").symlink_to("..")
    before = file_hashes(images)
    out = tmp_path / "out"
    pattern, again = str(images / "**" / "*.png"), str(images / "self" / "sub" / "b.png")
    result = fcnseg_cli(
        "predict", "--checkpoint", checkpoint, pattern, again, "--out", out, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "2 image(s) predicted" in result.stdout
    sources = [line.split(" -> ")[0] for line in result.stdout.splitlines() if " -> " in line]
    assert sources == [str(images / "a.png"), str(images / "sub" / "b.png")]
    assert sorted(path.name for path in out.iterdir()) == [
        "a.png",
        "a_overlay.png",
        "b.png",
        "b_overlay.png",
    ]
    assert file_hashes(images) == before


@pytest.mark.parametrize("given", ["folder", "glob", "link"])
def test_a_link_that_leads_back_to_itself_is_one_line(
    checkpoint, tmp_path, fcnseg_main, one_line_error, file_hashes, given
):
    photos = tmp_path / "photos"
    _image(photos / "a.png", 16, 16)
    (photos / "loop.png").symlink_to("loop.png")
    before = file_hashes(photos)
    inputs = {"folder": photos, "glob": photos / "*.png", "link": photos / "loop.png"}
    out = tmp_path / "out"
    result = fcnseg_main("predict", "--checkpoint", checkpoint, inputs[given], "--out", out)
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"fcnseg: error: {photos / 'loop.png'} is a symbolic link that leads back to itself: "
        "point it at an image or remove it"
    )
    assert not any(out.iterdir())
    assert file_hashes(photos) == before


def test_a_users_looping_link_in_the_output_folder_is_left_alone(checkpoint, tmp_path, fcnseg_main):
    image = _image(tmp_path / "in" / "x.png", 16, 16)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").symlink_to("x.png")
    result = fcnseg_main("predict", "--checkpoint", checkpoint, image, "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"{image} -> {out / 'x-2.png'}" in result.stdout
    assert (out / "x.png").readlink() == Path("x.png")


def test_an_image_too_large_for_memory_is_named_with_the_tile_to_use(
    checkpoint, tmp_path, capsys, monkeypatch, file_hashes
):
    photo = _image(tmp_path / "photos" / "huge.png", 30, 40)
    before = file_hashes(tmp_path / "photos")

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB.")

    monkeypatch.setattr("fcnseg.inference.fast_forward", no_memory)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fcnseg: error: {photo}: image 30x40 does not fit in memory")
    assert "--tile 1024" in line
    assert not any(out.iterdir())
    assert file_hashes(tmp_path / "photos") == before
