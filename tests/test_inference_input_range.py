"""Image value ranges at ``Segmenter.predict``: every input form is 0..255, and a PIL image
converts as its file does; values above 255, and a float image in 0..1 (torchvision's
ToTensor), are refused instead of silently predicted as a white or almost black image."""

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.inference import load_rgb

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def segmenter():
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=3)
    return fcnseg.Segmenter(model, classes=["a", "b", "c"])


def _photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image",
    [
        torch.from_numpy(_photo()).permute(2, 0, 1).float() / 255,  # ToTensor
        _photo().astype(np.float32) / 255,
        _photo().astype(np.float64) / 255,
    ],
    ids=["tensor", "float32 array", "float64 array"],
)
def test_a_float_image_in_0_to_1_is_refused(segmenter, image):
    with pytest.raises(
        ValueError, match=r"looks like 0\.\.1 \(ToTensor\): multiply by 255"
    ) as error:
        segmenter.predict(image)
    assert "\n" not in str(error.value)


def test_0_to_255_inputs_of_every_kind_give_the_same_labels(segmenter):
    photo = _photo(1)
    expected = segmenter.predict(photo)
    as_tensor = torch.from_numpy(photo).permute(2, 0, 1)
    for image in (as_tensor, as_tensor.float(), photo.astype(np.float32)):
        assert np.array_equal(segmenter.predict(image), expected)


def test_black_and_dark_float_images_are_accepted():
    assert load_rgb(torch.zeros(3, 4, 5)).max() == 0  # all zero: no way to tell, so allowed
    dark = np.full((4, 5, 3), 3.0, dtype=np.float32)  # a night shot in 0..255
    assert load_rgb(dark).max() == 3.0


def _sixteen_bit_png(path):
    """A 16-bit grey PNG whose values span 0..65535 (a scientific or HDR camera's frame)."""
    values = np.linspace(0, 65535, 20 * 24).reshape(20, 24).astype(np.uint16)
    Image.fromarray(values).save(path)
    return path


def test_a_16_bit_pil_image_reads_as_its_file_does(segmenter, tmp_path):
    path = _sixteen_bit_png(tmp_path / "frame.png")
    from_file = load_rgb(path)
    assert 0 < from_file.mean() < 255  # scaled from 0..65535, not clipped to white
    with Image.open(path) as opened:
        in_memory = [opened.copy(), opened.convert("I"), Image.fromarray(np.asarray(opened))]
    for image in in_memory:
        assert torch.equal(load_rgb(image), from_file), image.mode
        assert np.array_equal(segmenter.predict(image), segmenter.predict(path))


@pytest.mark.parametrize(
    "image",
    [
        np.full((20, 24, 3), 4000, dtype=np.uint16),
        np.full((20, 24), 300, dtype=np.int32),
        torch.full((3, 20, 24), 1000, dtype=torch.int32),
        np.full((20, 24, 3), 300.0, dtype=np.float32),
        torch.full((3, 20, 24), 256.0),
    ],
    ids=["uint16 array", "int32 grey array", "int32 tensor", "float array", "float tensor"],
)
def test_values_above_255_are_refused(segmenter, image):
    with pytest.raises(ValueError, match=r"above 255: scale it to 0\.\.255") as error:
        segmenter.predict(image)
    assert "\n" not in str(error.value)


def test_a_16_bit_array_holding_8_bit_values_is_taken_as_it_is(segmenter):
    photo = _photo(2)
    assert np.array_equal(segmenter.predict(photo.astype(np.uint16)), segmenter.predict(photo))
