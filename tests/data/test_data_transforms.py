"""Joint transforms keep image and label aligned, pad with the mean and the ignore label,
repeat exactly under a seed (whatever the loader's worker count), and normalise with the
convention recorded by the model; the collate function pads batches with ignore labels."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fcnseg.data import (
    Compose,
    Normalize,
    PadCollate,
    PhotometricJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    SyntheticShapes,
    eval_transforms,
    normalization_of,
    pad_collate,
    train_transforms,
)
from fcnseg.data.transforms import resize_label, zero_point
from fcnseg.models.normalization import CAFFE_VOC, EFFICIENTNET_LITE, IMAGENET


def coded_pair(height: int = 20, width: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose pixels encode their own label, so alignment is checkable after any
    geometric step: channel 0 = label * 10, channel 1 = row, channel 2 = column."""
    label = torch.randint(0, 20, (height, width), generator=torch.Generator().manual_seed(0))
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    cols = torch.arange(width).view(1, -1).expand(height, width)
    return torch.stack([label * 10, rows, cols]).float(), label


def aligned(image: torch.Tensor, label: torch.Tensor) -> bool:
    known = label != 255
    return torch.equal(image[0][known], label[known].float() * 10)


def test_flip_moves_image_and_label_together():
    image, label = coded_pair()
    flipped, flipped_label = RandomHorizontalFlip(p=1.0)(image, label)
    assert torch.equal(flipped_label, label.flip(-1)) and aligned(flipped, flipped_label)
    assert RandomHorizontalFlip(p=0.0)(image, label)[1] is label


def test_scale_resizes_label_by_nearest_and_keeps_alignment():
    image, label = coded_pair()
    image[0] = label.float() * 10  # bilinear would blend the codes: check the label alone
    for seed in range(5):
        scaled, scaled_label = RandomScale(0.5, 2.0)(
            image, label, generator=torch.Generator().manual_seed(seed)
        )
        assert scaled.shape[1:] == scaled_label.shape
        assert scaled_label.dtype == torch.int64
        assert set(scaled_label.unique().tolist()) <= set(label.unique().tolist())
    doubled = resize_label(label, 40, 60)
    assert torch.equal(doubled[::2, ::2], label) and torch.equal(doubled[1::2, 1::2], label)


def test_crop_pads_with_image_mean_and_ignore_label():
    image, label = coded_pair(10, 12)
    crop = RandomCrop((16, 20))
    cropped, cropped_label = crop(image, label, generator=torch.Generator().manual_seed(3))
    assert cropped.shape == (3, 16, 20) and cropped_label.shape == (16, 20)
    inside = cropped_label != 255
    assert inside.sum() == 10 * 12 and aligned(cropped, cropped_label)
    padding = ~inside
    for channel in range(3):
        assert torch.allclose(cropped[channel][padding], image[channel].mean())


def test_crop_padding_is_zero_after_normalisation():
    image, label = coded_pair(8, 8)
    for normalization in (CAFFE_VOC, IMAGENET, EFFICIENTNET_LITE):
        steps = Compose([RandomCrop(12, fill=normalization), Normalize(normalization)], seed=0)
        out, out_label = steps(image, label, index=0)
        assert torch.allclose(out[:, out_label == 255], torch.zeros(1), atol=1e-5)
    assert zero_point(CAFFE_VOC) == pytest.approx((122.67892, 116.66877, 104.00699))


def test_crop_of_a_larger_image_is_a_window():
    image, label = coded_pair(40, 50)
    cropped, cropped_label = RandomCrop(16)(
        image, label, generator=torch.Generator().manual_seed(1)
    )
    top, left = int(cropped[1, 0, 0]), int(cropped[2, 0, 0])
    assert torch.equal(cropped_label, label[top : top + 16, left : left + 16])


def test_jitter_changes_colour_only_and_stays_in_range():
    image, label = coded_pair()
    depth = torch.rand(1, 20, 30) * 5000
    jitter = PhotometricJitter(0.5, 0.5, 0.5)
    inputs, out_label = jitter(
        {"color": image, "depth": depth}, label, generator=torch.Generator().manual_seed(0)
    )
    assert out_label is label and torch.equal(inputs["depth"], depth)
    assert not torch.equal(inputs["color"], image)
    assert inputs["color"].min() >= 0 and inputs["color"].max() <= 255


def test_geometric_steps_move_every_input_and_label_of_a_dict():
    image, label = coded_pair()
    inputs = {"color": image, "hha": image.clone(), "depth": image[:1].clone()}
    labels = {"semantic": label, "geometric": label.clone()}
    steps = Compose([RandomScale(0.7, 1.4), RandomCrop(24), RandomHorizontalFlip()], seed=5)
    out, out_labels = steps(inputs, labels, index=3)
    assert torch.equal(out["color"], out["hha"]) and torch.equal(out["color"][:1], out["depth"])
    assert torch.equal(out_labels["semantic"], out_labels["geometric"])


def test_seeded_pipeline_is_a_function_of_seed_epoch_and_index():
    dataset = SyntheticShapes("train", num_images=4, size=32)
    image, label = dataset[0]

    def run(seed, index, epoch=0):
        steps = train_transforms(CAFFE_VOC, crop_size=24, seed=seed)
        steps.set_epoch(epoch)
        return steps(image, label, index=index)

    first, again = run(7, 0), run(7, 0)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(run(7, 1)[0], first[0])
    assert not torch.equal(run(8, 0)[0], first[0])
    assert not torch.equal(run(7, 0, epoch=1)[0], first[0])


def test_same_batches_with_zero_and_one_worker():
    def batches(workers):
        dataset = SyntheticShapes("train", num_images=4, size=24)
        dataset.transforms = train_transforms(IMAGENET, crop_size=20, seed=3)
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=pad_collate)
        return list(loader)

    for (a_image, a_label), (b_image, b_label) in zip(batches(0), batches(1), strict=True):
        assert torch.equal(a_image, b_image) and torch.equal(a_label, b_label)


def test_normalize_takes_the_models_recorded_convention():
    class Backbone(nn.Module):
        normalization = CAFFE_VOC

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()

    assert normalization_of(Model()) is CAFFE_VOC
    with pytest.raises(ValueError, match="records no .normalization"):
        normalization_of(nn.Conv2d(3, 3, 1))
    image, label = coded_pair()
    out, out_label = eval_transforms(normalization_of(Model()))(image, label)
    assert torch.allclose(out, CAFFE_VOC(image)) and out_label is label
    assert torch.allclose(out[0], image[2] - 104.00699)  # BGR, mean subtracted, no scaling
    from_model, _ = eval_transforms(Model())(image, label)  # the model itself stands for it
    assert torch.equal(from_model, out)
    steps = train_transforms(Model(), crop_size=8, scale=None, flip=False, jitter=False, seed=0)
    assert steps.steps[-1].normalization is CAFFE_VOC


def test_pad_collate_pads_images_with_fill_and_labels_with_ignore():
    small = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64))
    large = (torch.full((3, 6, 3), 2.0), torch.ones(6, 3, dtype=torch.int64))
    images, labels = pad_collate([small, large])
    assert images.shape == (2, 3, 6, 5) and labels.shape == (2, 6, 5)
    assert torch.equal(images[0, :, :4, :5], small[0]) and (images[0, :, 4:] == 0).all()
    assert (labels[0, 4:] == 255).all() and (labels[1, :, 3:] == 255).all()
    assert labels.dtype == torch.int64
    images, labels = PadCollate(size_divisor=8, fill=-1.0)([small, large])
    assert images.shape == (2, 3, 8, 8) and images[1, 0, 7, 7] == -1


def test_pad_collate_handles_dict_inputs_and_labels():
    item = (
        {"color": torch.ones(3, 2, 2), "depth": torch.ones(1, 2, 2)},
        {"semantic": torch.zeros(2, 2, dtype=torch.int64)},
    )
    other = (
        {"color": torch.ones(3, 3, 1), "depth": torch.ones(1, 3, 1)},
        {"semantic": torch.zeros(3, 1, dtype=torch.int64)},
    )
    images, labels = pad_collate([item, other])
    assert images["color"].shape == (2, 3, 3, 2) and images["depth"].shape == (2, 1, 3, 2)
    assert labels["semantic"][0, 2].tolist() == [255, 255]
