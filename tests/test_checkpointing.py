"""Activation checkpointing: same loss, gradients and batch-norm statistics; less kept."""

import copy

import pytest
import torch

import fcnseg
from fcnseg.models.backbones import set_activation_checkpointing

pytestmark = pytest.mark.usefixtures("one_thread")

SLOW = pytest.mark.slow
MODELS = [
    pytest.param("fcn8s_vgg16", {"geometry": "aligned"}, 64, marks=SLOW, id="fcn8s_vgg16"),
    pytest.param("fcn32s_alexnet", {}, 64, marks=SLOW, id="fcn32s_alexnet"),
    pytest.param("fcn16s_googlenet", {"geometry": "aligned"}, 64, id="fcn16s_googlenet"),
    pytest.param("fcn8s_resnet18", {}, 64, id="fcn8s_resnet18"),
    pytest.param("fcn8s_efficientnet_lite0", {}, 64, id="fcn8s_efficientnet_lite0"),
]


def _pair(name, options):
    torch.manual_seed(0)
    model = fcnseg.build_model(name, num_classes=3, **options).train()
    with torch.no_grad():
        for module in model.head.modules():  # score layers start at zero: give them weights
            if isinstance(module, torch.nn.Conv2d) and module.weight.requires_grad:
                module.weight.normal_(0, 0.01)
    checkpointed = copy.deepcopy(model)
    set_activation_checkpointing(checkpointed, True)
    return model, checkpointed


def _step(model, image, target, seed=1):
    torch.manual_seed(seed)  # the same dropout and drop-connect masks in both runs
    loss = torch.nn.functional.cross_entropy(model(image), target)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name, options, size", MODELS)
def test_checkpointing_changes_no_number(name, options, size):
    model, checkpointed = _pair(name, options)
    image = torch.randn(2, 3, size, size)
    target = torch.randint(0, 3, (2, size, size))
    torch.testing.assert_close(_step(checkpointed, image, target), _step(model, image, target))
    for (key, plain), ours in zip(model.named_parameters(), checkpointed.parameters(), strict=True):
        if plain.grad is not None:
            torch.testing.assert_close(ours.grad, plain.grad, msg=key, rtol=1e-4, atol=1e-7)
    for (key, plain), ours in zip(model.named_buffers(), checkpointed.buffers(), strict=True):
        torch.testing.assert_close(ours, plain, msg=key)  # running stats counted once


def _saved_bytes(model, image, target) -> int:
    """Bytes the autograd graph keeps for the backward pass (what checkpointing saves)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        torch.nn.functional.cross_entropy(model(image), target)
    return total


@pytest.mark.parametrize(
    "name, options", [("fcn8s_vgg16", {"geometry": "aligned"}), ("fcn8s_efficientnet_lite0", {})]
)
def test_checkpointing_keeps_less_for_backward(name, options):
    model, checkpointed = _pair(name, options)
    image, target = torch.randn(1, 3, 96, 96), torch.randint(0, 3, (1, 96, 96))
    assert _saved_bytes(checkpointed, image, target) < 0.5 * _saved_bytes(model, image, target)


def test_checkpointing_is_off_outside_training():
    _, checkpointed = _pair("fcn8s_efficientnet_lite0", {})
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        checkpointed.eval()
        before = [b.clone() for b in checkpointed.buffers()]
        checkpointed(image)
    assert all(torch.equal(a, b) for a, b in zip(before, checkpointed.buffers(), strict=True))
