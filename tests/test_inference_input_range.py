"""Image value ranges at ``Segmenter.predict`` (issue 13): uint8 and float inputs are 0..255;
a float image in 0..1 (torchvision's ToTensor) is refused instead of silently predicted as an
almost black image."""

import numpy as np
import pytest
import torch

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
