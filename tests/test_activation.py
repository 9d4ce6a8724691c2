"""fcnseg's ReLU6 (models/activation.py) trains exactly as ``nn.ReLU6(inplace=True)`` does,
without the copy of its input that PyTorch's in-place version keeps for the backward pass."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.losses import SegmentationLoss
from fcnseg.models.activation import ReLU6


def _with_torch_relu6(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, ReLU6):
                setattr(module, name, nn.ReLU6(inplace=True))
    return model


def test_gradient_equals_torch_relu6_at_the_kinks_and_beyond() -> None:
    values = torch.tensor([-2.0, -0.0, 0.0, 1e-7, 3.0, 6.0 - 1e-6, 6.0, 6.5, float("inf")])
    values = torch.cat([values, torch.randn(1000) * 4 + 3])
    grad = torch.randn_like(values)
    ours = values.clone().requires_grad_()
    theirs = values.clone().requires_grad_()
    out = ReLU6()(ours * 1)
    ref = nn.ReLU6(inplace=True)(theirs * 1)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(out, ref)
    assert torch.equal(ours.grad, theirs.grad)


def test_it_keeps_its_output_not_a_copy_of_its_input() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = ReLU6()(x * 1)
    assert len(saved) == 1
    assert saved[0].untyped_storage().data_ptr() == out.untyped_storage().data_ptr()


@pytest.mark.parametrize("checkpointing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_lite0_training_step_is_bit_exact_with_torch_relu6(checkpointing: bool) -> None:
    torch.manual_seed(0)
    ours = fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=5).train()
    ours.backbone.checkpointing = checkpointing
    theirs = _with_torch_relu6(ours)
    criterion = SegmentationLoss(reduction="mean")
    image = torch.randn(2, 3, 96, 96)
    label = torch.randint(0, 5, (2, 96, 96))
    losses = []
    for model in (ours, theirs):
        torch.manual_seed(1)  # the same drop-connect masks
        loss = criterion(model(image), label)
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(*losses)
    pairs = zip(ours.named_parameters(), theirs.parameters(), strict=True)
    for (name, a), b in pairs:
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), name


def test_without_gradients_it_is_the_standard_operator() -> None:
    x = torch.randn(3, 5) * 5
    with torch.no_grad():
        out = ReLU6()(x.clone())
    assert torch.equal(out, torch.clamp(x, 0, 6))
    assert out.grad_fn is None
