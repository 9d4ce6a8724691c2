"""Cross-entropy reductions, loss sampling and class balancing; focal and Dice losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from fcnseg.losses import (
    LOSSES,
    SegmentationLoss,
    class_pixel_counts,
    dice_loss,
    focal_loss,
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
    with pytest.raises(ValueError, match="loss must be one of cross_entropy, dice"):
        SegmentationLoss(loss="lovasz")
    with pytest.raises(ValueError, match="focal_gamma must be at least 0"):
        SegmentationLoss(loss="focal", focal_gamma=-1.0)


# Two classes, 2 x 2 pixels. Logits (0, z) give softmax (1 / (1 + e^z), e^z / (1 + e^z)):
# z = ln 3 -> (1/4, 3/4), z = 0 -> (1/2, 1/2), z = -ln 3 -> (3/4, 1/4).
#   pixel  a: z = ln 3, label 1    b: z = 0, label 0
#          c: z = -ln 3, label 0   d: z = ln 3, label 255 (ignored)
LN3 = math.log(3)


def _tiny(d_logit=LN3):
    z = torch.tensor([[LN3, 0.0], [-LN3, d_logit]])
    logits = torch.stack([torch.zeros(2, 2), z])[None]  # 1 x 2 x 2 x 2
    labels = torch.tensor([[[1, 0], [0, 255]]])
    return logits, labels


def test_focal_loss_by_hand():
    logits, labels = _tiny()
    # (1 - p_t)^2 * -ln p_t: a and c have p_t = 3/4, b has p_t = 1/2
    a = c = (1 / 4) ** 2 * math.log(4 / 3)
    b = (1 / 2) ** 2 * math.log(2)
    focal = SegmentationLoss(loss="focal", reduction="sum")
    assert focal(logits, labels).item() == pytest.approx(a + b + c, rel=1e-6)
    mean = SegmentationLoss(loss="focal", focal_gamma=2.0)(logits, labels)
    assert mean.item() == pytest.approx((a + b + c) / 3, rel=1e-6)  # 3 labelled pixels
    # class weights scale each pixel by its label's weight; the mean divides by their sum
    weighted = SegmentationLoss(loss="focal", weight=[2.0, 0.5])(logits, labels)
    assert weighted.item() == pytest.approx((0.5 * a + 2 * b + 2 * c) / 4.5, rel=1e-6)
    # gamma = 1 by hand too: (1 - p_t) * -ln p_t
    gamma1 = SegmentationLoss(loss="focal", focal_gamma=1.0, reduction="sum")(logits, labels)
    assert gamma1.item() == pytest.approx(2 * math.log(4 / 3) / 4 + math.log(2) / 2, rel=1e-6)


def test_focal_loss_with_gamma_0_is_cross_entropy():
    logits, labels = _batch(4)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0])
    for reduction in ("sum", "mean"):
        focal = focal_loss(logits, labels, gamma=0.0, weight=weight, reduction=reduction)
        expected = F.cross_entropy(logits, labels, weight=weight, ignore_index=255, reduction=reduction)  # fmt: skip
        assert focal.item() == pytest.approx(expected.item(), rel=1e-6)


def test_dice_loss_by_hand():
    logits, labels = _tiny()
    # class 0: p0 over a, b, c = 1/4 + 1/2 + 3/4 = 3/2; labelled b, c (2 pixels); overlap
    # 1/2 + 3/4 = 5/4; dice = 2 (5/4) / (3/2 + 2) = 5/7
    # class 1: p1 sum 3/4 + 1/2 + 1/4 = 3/2; labelled a (1); overlap 3/4; dice = 3/5
    loss = SegmentationLoss(loss="dice")(logits, labels)
    assert loss.item() == pytest.approx(((1 - 5 / 7) + (1 - 3 / 5)) / 2, rel=1e-6)  # 12/35
    # class weights: a weighted mean over the classes, w = (2, 0.5)
    weighted = SegmentationLoss(loss="dice", weight=[2.0, 0.5])(logits, labels)
    assert weighted.item() == pytest.approx((2 * 2 / 7 + 0.5 * 2 / 5) / 2.5, rel=1e-6)
    # reduction does not apply to a ratio
    assert SegmentationLoss(loss="dice", reduction="sum")(logits, labels).item() == pytest.approx(
        loss.item()
    )
    # ce + dice adds the two; cross-entropy of a, b, c is ln(4/3), ln 2, ln(4/3)
    both = SegmentationLoss(loss="ce+dice")(logits, labels)
    ce = (2 * math.log(4 / 3) + math.log(2)) / 3
    assert both.item() == pytest.approx(ce + 12 / 35, rel=1e-6)


def test_dice_leaves_out_classes_absent_from_the_labels():
    logits, labels = _tiny()
    # a third class nobody is labelled with, and almost never predicted: still 12/35, not
    # (2 * 12/35) / 3 as it would be if the absent class counted as a perfect score
    three = torch.cat([logits, torch.full((1, 1, 2, 2), -30.0)], dim=1)
    assert dice_loss(three, labels).item() == pytest.approx(12 / 35, rel=1e-5)
    # nothing labelled at all: nothing to score
    assert dice_loss(three, torch.full_like(labels, 255)).item() == 0.0


@pytest.mark.parametrize("loss", LOSSES)
def test_ignored_pixels_do_not_contribute(loss):
    criterion = SegmentationLoss(loss=loss, reduction="mean")
    logits, labels = _tiny(d_logit=LN3)
    other, _ = _tiny(d_logit=-5.0)  # the ignored pixel d scores something else entirely
    assert criterion(logits, labels).item() == pytest.approx(criterion(other, labels).item())
    logits.requires_grad_(True)
    criterion(logits, labels).backward()
    assert torch.all(logits.grad[0, :, 1, 1] == 0)  # no gradient reaches pixel d
    assert logits.grad[0, :, :1].abs().sum() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_gradients_are_finite_even_for_confident_logits(loss):
    logits, labels = _batch(5, c=3, h=8, w=8)
    labels = labels.clamp(max=2).masked_fill(labels == 255, 255)
    logits = logits * 1e3  # softmax saturates: p_t rounds to 1 or 0
    logits.requires_grad_(True)
    for gamma in (0.0, 0.5, 2.0):
        criterion = SegmentationLoss(loss=loss, focal_gamma=gamma, weight=[1.0, 2.0, 0.5])
        value = criterion(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), (loss, gamma)


def test_every_loss_samples_cells_in_training():
    logits, labels = _batch(6, h=16, w=16)
    for loss in LOSSES:
        criterion = SegmentationLoss(loss=loss, sampling=0.5, sampling_cell=4)
        torch.manual_seed(3)
        sampled = criterion(logits, labels)
        torch.manual_seed(3)
        keep = sample_mask(labels.shape, 0.5, 4)
        plain = SegmentationLoss(loss=loss)
        expected = plain(logits, labels.masked_fill(~keep, 255))
        assert sampled.item() == pytest.approx(expected.item(), rel=1e-6), loss
