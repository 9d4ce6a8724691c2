"""Segmenter: a checkpoint's model predicting label maps for images of any size."""

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.data import SYNTHETIC_CLASSES, DatasetError, voc_palette
from fcnseg.inference import Segmenter, load_rgb, save_mask
from fcnseg.tiling import Tiling

pytestmark = pytest.mark.usefixtures("one_thread")  # small images: threads only wait


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=7)
    with torch.no_grad():
        for name, parameter in model.head.named_parameters():
            if name.startswith("score"):
                parameter.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return fcnseg.save_weights(path, model, classes=SYNTHETIC_CLASSES, palette=voc_palette(7))


@pytest.fixture(scope="module")
def segmenter(checkpoint_path):
    return fcnseg.Segmenter.from_checkpoint(checkpoint_path)


def test_any_size_and_every_input_form(segmenter, tmp_path):
    rng = np.random.default_rng(0)
    for height, width in [(37, 53), (64, 64), (17, 90)]:
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = segmenter.predict(array)
        assert labels.shape == (height, width) and labels.dtype == np.uint8
        assert labels.max() < 7
        Image.fromarray(array).save(tmp_path / "x.png")
        assert np.array_equal(segmenter.predict(Image.fromarray(array)), labels)
        assert np.array_equal(segmenter.predict(tmp_path / "x.png"), labels)
        assert np.array_equal(segmenter.predict(str(tmp_path / "x.png")), labels)
        tensor = torch.from_numpy(array).permute(2, 0, 1).float()
        assert np.array_equal(segmenter.predict(tensor), labels)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    assert segmenter.predict(gray).shape == (20, 30)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    assert segmenter.predict(rgba).shape == (20, 30)


def test_probabilities_on_request(segmenter):
    image = np.random.default_rng(1).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    labels, probs = segmenter.predict(image, probabilities=True)
    assert probs.shape == (7, 40, 44) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    chosen = np.take_along_axis(probs, labels[None].astype(np.int64), 0)[0]
    assert np.allclose(chosen, probs.max(0), atol=1e-6)  # the label is the likeliest class


def test_matches_the_model_run_by_hand(segmenter):
    image = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        expected = segmenter.model(segmenter.model.normalization(x))[0].argmax(0).numpy()
    assert np.array_equal(segmenter.predict(image), expected)
    assert not segmenter.model.training and segmenter.classes == SYNTHETIC_CLASSES


def test_index_png_keeps_classes_and_palette(tmp_path):
    labels = np.array([[0, 1, 2], [3, 4, 6]], dtype=np.uint8)
    save_mask(labels, tmp_path / "m.png", voc_palette(7))
    mask = Image.open(tmp_path / "m.png")
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), labels)
    assert mask.getpalette()[3:6] == [128, 0, 0]


def test_bad_images(segmenter, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot be decoded"):
        segmenter.predict(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="H x W x 3"):
        load_rgb(np.zeros((4, 4, 5)))


def test_class_names_must_fit_the_model():
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=3)
    with pytest.raises(ValueError, match="2 class names for the 3 classes"):
        Segmenter(model, classes=["a", "b"])


def test_classes_left_out_are_named_by_number():
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=3)
    segmenter = Segmenter(model)
    assert segmenter.classes == ("class 0", "class 1", "class 2")
    assert len(segmenter.palette) >= 3
    assert segmenter.predict(np.zeros((9, 11, 3), np.uint8)).shape == (9, 11)


def test_a_list_or_a_batch_gives_a_list_in_order(segmenter):
    rng = np.random.default_rng(3)
    sizes = [(37, 53), (20, 30), (37, 53), (37, 53), (20, 30)]
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]
    one_by_one = [segmenter.predict(image) for image in images]
    for batch_size in (1, 2, 8):  # the same, batched or not, sizes mixed
        got = segmenter.predict(images, batch_size=batch_size)
        assert isinstance(got, list) and len(got) == len(images)
        for labels, expected in zip(got, one_by_one, strict=True):
            assert np.array_equal(labels, expected)
    assert len(segmenter.predict(tuple(images[:2]))) == 2
    assert segmenter.predict([]) == []
    same = [images[0], images[2], images[3]]
    tensor = torch.from_numpy(np.stack(same)).permute(0, 3, 1, 2)  # N x C x H x W
    array = np.stack(same)  # N x H x W x C, the stacked form of H x W x C arrays
    for batch in (tensor, tensor.float(), array):
        labels = segmenter.predict(batch)
        assert isinstance(labels, list) and len(labels) == 3
        for got, expected in zip(
            labels, [one_by_one[0], one_by_one[2], one_by_one[3]], strict=True
        ):
            assert np.array_equal(got, expected)
    pairs = segmenter.predict(images[:2], probabilities=True)
    for (labels, probs), expected in zip(pairs, one_by_one[:2], strict=True):
        assert np.array_equal(labels, expected) and probs.shape == (7, *expected.shape)
    with pytest.raises(ValueError, match="batch_size"):
        segmenter.predict(images, batch_size=0)


def test_a_batch_runs_as_one_forward_pass(checkpoint_path):
    segmenter = Segmenter.from_checkpoint(checkpoint_path)
    calls = []
    run = segmenter._runner
    segmenter._runner = lambda batch, **kw: calls.append(len(next(iter(batch.values())))) or run(batch, **kw)  # fmt: skip
    images = [np.zeros((16, 16, 3), np.uint8)] * 5 + [np.zeros((8, 8, 3), np.uint8)]
    segmenter.predict(images, batch_size=4)
    assert sorted(calls) == [1, 1, 4]


def test_device_auto_is_the_gpu_when_there_is_one(checkpoint_path):
    segmenter = Segmenter.from_checkpoint(checkpoint_path, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert segmenter.device.type == expected
    assert next(segmenter.model.parameters()).device.type == expected
    assert segmenter.predict(np.zeros((12, 14, 3), np.uint8)).shape == (12, 14)
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=2)
    assert Segmenter(model, device="auto").device.type == expected
    assert Segmenter(model, device=torch.device("cpu")).device.type == "cpu"


def test_save_mask_records_text_chunks(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("fcnseg.checkpoint", "model.pt")
    labels = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    save_mask(labels, tmp_path / "m.png", voc_palette(3), pnginfo=info)
    mask = Image.open(tmp_path / "m.png")
    assert mask.text == {"fcnseg.checkpoint": "model.pt"}
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), labels)
    with pytest.raises(ValueError, match="256 classes"):
        save_mask(np.full((2, 2), 300), tmp_path / "big.png", voc_palette(3))


def _no_memory(*args, **kwargs):
    raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB.")


def test_an_image_too_large_for_memory_says_to_tile(checkpoint_path, monkeypatch):
    monkeypatch.setattr("fcnseg.inference.fast_forward", _no_memory)
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    with pytest.raises(MemoryError, match=r"image 40x60 .*tiling=Tiling\.of\(1024\)") as whole:
        Segmenter.from_checkpoint(checkpoint_path).predict(image)
    tiled = Segmenter.from_checkpoint(checkpoint_path, tiling=Tiling.of(512))
    with pytest.raises(MemoryError, match=r"in tiles of 512x512: .*Tiling\.of\(256\)") as in_tiles:
        tiled.predict(np.zeros((600, 700, 3), dtype=np.uint8))
    assert "\n" not in str(whole.value) + str(in_tiles.value)


def test_threads_mean_the_same_on_the_torch_engine(checkpoint_path):
    """Issue 29: ``threads=`` set the ONNX engines' threads and left torch's alone; torch
    has one count per process, which a torch-engine Segmenter given threads now sets (the
    one_thread fixture restores it)."""
    torch.set_num_threads(2)
    Segmenter.from_checkpoint(checkpoint_path)
    assert torch.get_num_threads() == 2  # not given: left as it is
    Segmenter.from_checkpoint(checkpoint_path, threads=1)
    assert torch.get_num_threads() == 1


def test_overlay_draws_the_prediction_with_and_without_a_legend(segmenter):
    image = np.random.default_rng(3).integers(0, 256, (40, 300, 3), dtype=np.uint8)
    labels = segmenter.predict(image)
    plain = segmenter.overlay(image, labels, legend=False)
    assert plain.size == (300, 40) and plain.mode == "RGB"
    expected = fcnseg.viz.overlay(image, labels, segmenter.palette, classes=segmenter.classes)
    assert np.array_equal(np.asarray(plain), expected)
    pictured = segmenter.overlay(image)  # predicted here; a legend band below the image
    assert pictured.width == 300 and pictured.height > 40
    assert np.array_equal(np.asarray(pictured)[:40], np.asarray(plain))
    with pytest.raises(ValueError, match="the model predicts"):
        segmenter.overlay(image, labels, task="depth")
