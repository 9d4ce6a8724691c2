"""Cross-entropy reductions, loss sampling and class balancing."""

import pytest
import torch
import torch.nn.functional as F

from fcnseg.losses import (
    SegmentationLoss,
    class_pixel_counts,
    median_frequency_weights,
    sample_mask,
)


def _batch(seed=0, n=2, c=4, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[0, 0, :3] = 255
    return logits, labels


def _per_pixel(logits, labels):
    """-log softmax of the labelled class, pixel by pixel; ignored pixels dropped."""
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    flat = labels.reshape(-1)
    keep = flat != 255
    return -log_p[keep].gather(1, flat[keep, None])[:, 0], flat[keep]


def test_sum_is_the_reference_unnormalised_loss_and_mean_divides_by_labelled_pixels():
    logits, labels = _batch()
    losses, _ = _per_pixel(logits, labels)
    summed = SegmentationLoss(reduction="sum")(logits, labels)
    mean = SegmentationLoss(reduction="mean")(logits, labels)
    assert summed.item() == pytest.approx(losses.sum().item(), rel=1e-6)
    assert mean.item() == pytest.approx(losses.mean().item(), rel=1e-6)
    assert losses.numel() == labels.numel() - 3  # the ignore label adds nothing


def test_class_weights_scale_each_pixel():
    logits, labels = _batch(1)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0])
    losses, classes = _per_pixel(logits, labels)
    summed = SegmentationLoss(reduction="sum", weight=weight)(logits, labels)
    assert summed.item() == pytest.approx((losses * weight[classes]).sum().item(), rel=1e-6)
    mean = SegmentationLoss(reduction="mean", weight=weight)(logits, labels)
    expected = (losses * weight[classes]).sum() / weight[classes].sum()
    assert mean.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="3 class weights for a model of 4"):
        SegmentationLoss(weight=[1.0, 1.0, 1.0])(logits, labels)


def test_sampling_keeps_whole_cells_with_probability_one_minus_p():
    torch.manual_seed(0)
    mask = sample_mask((4, 70, 90), p=0.25, cell=8)
    assert mask.shape == (4, 70, 90)
    cells = mask[:, ::8, ::8]
    # every 8 x 8 block is all kept or all dropped
    blocks = mask[:, :64, :88].reshape(4, 8, 8, 11, 8).permute(0, 1, 3, 2, 4).reshape(4, 8, 11, 64)
    assert torch.all(blocks.all(-1) | ~blocks.any(-1))
    assert cells.float().mean().item() == pytest.approx(0.75, abs=0.06)


def test_sampled_loss_is_the_loss_of_the_kept_pixels_and_only_in_training():
    logits, labels = _batch(2, h=16, w=16)
    criterion = SegmentationLoss(reduction="sum", sampling=0.5, sampling_cell=4)
    torch.manual_seed(3)
    sampled = criterion(logits, labels)
    torch.manual_seed(3)
    keep = sample_mask(labels.shape, 0.5, 4)
    expected = F.cross_entropy(
        logits, labels.masked_fill(~keep, 255), ignore_index=255, reduction="sum"
    )
    assert sampled.item() == pytest.approx(expected.item(), rel=1e-6)
    assert sampled < SegmentationLoss(reduction="sum")(logits, labels)
    criterion.eval()  # evaluation sees every pixel
    assert criterion(logits, labels).item() == pytest.approx(
        SegmentationLoss(reduction="sum")(logits, labels).item()
    )


def test_median_frequency_weights_by_hand():
    # image 1: 6 px of class 0, 2 of class 1; image 2: 4 of class 0, 4 of class 2
    labels = [
        torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]]),
        torch.tensor([[0, 0, 0, 0], [2, 2, 2, 2]]),
    ]
    pixels, image_pixels = class_pixel_counts(labels, 4)
    assert pixels.tolist() == [10, 2, 4, 0] and image_pixels.tolist() == [16, 8, 8, 0]
    weights = median_frequency_weights(labels, 4)
    # frequencies 10/16, 2/8, 4/8; median 4/8; class 3 never appears: weight 0
    assert weights == pytest.approx([0.5 / (10 / 16), 0.5 / 0.25, 1.0, 0.0])


def test_median_frequency_from_a_dataset():
    from fcnseg.data import SyntheticShapes

    dataset = SyntheticShapes("train", size=32, num_images=6)
    weights = median_frequency_weights((dataset[i][1] for i in range(6)), 7)
    assert len(weights) == 7 and all(w >= 0 for w in weights)
    assert weights[0] < 1.0  # background is the most frequent class: weighed down


def test_bad_options():
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        SegmentationLoss(reduction="none")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SegmentationLoss(sampling=1.0)
    with pytest.raises(ValueError, match="no labelled pixel"):
        median_frequency_weights([torch.full((2, 2), 255)], 3)
