"""Segmenter: a checkpoint's model predicting label maps for images of any size."""

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.data import SYNTHETIC_CLASSES, DatasetError, voc_palette
from fcnseg.engine import checkpoint as ckpt
from fcnseg.inference import Segmenter, load_rgb, save_mask

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
    checkpoint = ckpt.make_checkpoint(
        model, build_options={}, classes=SYNTHETIC_CLASSES, palette=voc_palette(7)
    )
    ckpt.save_checkpoint(checkpoint, path)
    return path


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
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        Segmenter(model, classes=["a", "b"])
