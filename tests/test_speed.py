"""Speed options agree with the plain fp32 path: depthwise upsampling, fast_forward, bf16."""

import copy
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from slim_models import fcn_on
from torch.utils.flop_counter import FlopCounterMode

import fcnseg
from fcnseg.inference import Segmenter
from fcnseg.models import FCN
from fcnseg.models.backbones.vgg import VGG16
from fcnseg.models.upsample import Upsample
from fcnseg.speed import (
    AdaptiveThreads,
    InferenceOptions,
    fast_forward,
    fold_batch_norm,
    native_bf16,
    prepare_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only wait


def _flops(run) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


@pytest.mark.parametrize(("factor", "odd"), [(2, False), (8, False), (32, False), (32, True)])
def test_depthwise_upsampling_equals_the_full_deconvolution(factor, odd):
    up = Upsample(5, factor, odd=odd)
    x = torch.randn(2, 5, 4, 6)
    full = F.conv_transpose2d(x, up.weight, stride=factor)
    assert up._diagonal_kernels() is not None  # the fast path is taken
    torch.testing.assert_close(up(x), full, rtol=1e-6, atol=1e-6)
    assert up.weight.shape == (5, 5, up.kernel_size, up.kernel_size)  # the Caffe blob kept
    flops = _flops(lambda: up(x))
    assert flops * 5 == _flops(lambda: F.conv_transpose2d(x, up.weight, stride=factor))


def test_a_non_diagonal_weight_keeps_the_full_deconvolution():
    up = Upsample(3, 4)
    x = torch.randn(1, 3, 5, 5)
    up(x)  # caches the diagonal decision
    with torch.no_grad():
        up.weight[0, 1, 2, 2] = 1.0  # an in-place edit invalidates the cache
    assert up._diagonal_kernels() is None
    torch.testing.assert_close(up(x), F.conv_transpose2d(x, up.weight, stride=4))


def test_gradients_match_fixed_and_learned():
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    fixed = Upsample(4, 8)
    with torch.inference_mode():
        fixed(x.detach())  # a cache built in inference mode must still serve backward
    fixed(x).square().sum().backward()
    expected = x.detach().clone().requires_grad_()
    F.conv_transpose2d(expected, fixed.weight, stride=8).square().sum().backward()
    torch.testing.assert_close(x.grad, expected.grad, rtol=1e-5, atol=1e-5)

    learned = Upsample(4, 8, learnable=True)
    learned(x).sum().backward()  # the full form: off-diagonal kernels get their gradient
    assert learned.weight.grad is not None and learned.weight.grad[0, 1].abs().sum() > 0


def _slim_fcn8s(geometry: str = "caffe") -> FCN:
    torch.manual_seed(0)
    backbone = VGG16(geometry=geometry, widths=(8, 8, 16, 16, 16), fc_channels=32)
    model = fcn_on(backbone, 6, "8s").eval()
    with torch.no_grad():
        for name, parameter in model.head.named_parameters():
            if name.startswith("score"):
                parameter.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("geometry", ["caffe", "aligned"])
def test_fp32_fast_forward_matches_the_plain_forward(geometry):
    model = _slim_fcn8s(geometry)
    x = torch.randn(2, 3, 45, 61) * 50
    with torch.no_grad():
        expected = model(x)
    for channels_last in (False, True):
        options = InferenceOptions(channels_last=channels_last, bf16=False)
        scores = fast_forward(prepare_model(model, options), x, options)
        assert scores.dtype == torch.float32  # in the layout computed (no copy to another)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_bf16_agrees_with_fp32():
    model = _slim_fcn8s()
    x = torch.randn(1, 3, 64, 80) * 50
    with torch.no_grad():
        expected = model(x)
    scores = fast_forward(model, x, InferenceOptions(bf16=True))
    assert scores.dtype == torch.float32
    # bf16 keeps 8 significant bits: observed max error 0.85% of the score range here
    assert (scores - expected).abs().max() <= 0.03 * expected.abs().max()
    agreement = (scores.argmax(1) == expected.argmax(1)).float().mean()
    assert agreement >= 0.99  # observed: 100% on this random net


def test_segmenter_uses_the_options():
    model = _slim_fcn8s()
    image = np.random.default_rng(0).integers(0, 256, (37, 41, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        expected = model(model.normalization(x))[0].argmax(0).numpy()
    segmenter = Segmenter(model, classes=list("abcdef"))  # defaults: channels-last, fp32
    assert segmenter.speed == InferenceOptions(channels_last=True, bf16=False)
    assert np.array_equal(segmenter.predict(image), expected)
    fast = Segmenter(model, classes=list("abcdef"), speed=InferenceOptions(bf16=True))
    assert (fast.predict(image) == expected).mean() >= 0.99
    assert isinstance(native_bf16(), bool)


def _with_running_stats(name):
    """A model whose batch norms hold varied statistics and affine parameters."""
    torch.manual_seed(0)
    model = fcnseg.build_model(name, num_classes=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
        model.head.score_fr.weight.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["fcn8s_efficientnet_lite0", "fcn16s_resnet18"])
def test_folded_batch_norm_gives_the_same_scores(name):
    model = _with_running_stats(name)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_batch_norm(folded) == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = model(image)
        torch.testing.assert_close(
            folded(image), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()
        )


def test_batch_norm_in_training_mode_is_not_folded():
    model = _with_running_stats("fcn8s_resnet18").train()
    assert fold_batch_norm(model) == 0


def test_segmenter_folds_by_default_and_predicts_the_same():
    model = _with_running_stats("fcn8s_efficientnet_lite0")
    plain = Segmenter(
        copy.deepcopy(model), classes=list("abcd"), speed=InferenceOptions(fold_batch_norm=False)
    )
    folded = Segmenter(model, classes=list("abcd"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert (folded.predict(image) == plain.predict(image)).mean() > 0.999


def test_a_backbone_that_cannot_be_traced_is_left_unfolded():
    model = _with_running_stats("fcn8s_resnet18")

    class DataDependent(type(model.backbone)):
        def forward(self, x):
            return super().forward(x if x.sum() > 0 else -x)  # tracing cannot follow this

    model.backbone.__class__ = DataDependent
    assert fold_batch_norm(model) == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_segmenter_predicts_the_same():
    model = _with_running_stats("fcn8s_resnet18")
    plain = Segmenter(copy.deepcopy(model), classes=list("abcd"))
    fast = Segmenter(model, classes=list("abcd"), speed=InferenceOptions(compile=True))
    batch = plain.batch(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    expected = plain.scores(batch)["semantic"]
    scale = expected.abs().max().item()
    torch.testing.assert_close(
        fast.scores(batch)["semantic"], expected, rtol=1e-3, atol=1e-4 * scale
    )
    assert fast._runner is not fast.model  # it did compile


def _calls(chooser: AdaptiveThreads, now: list[float], costs: dict[int, float], count: int):
    """``count`` calls of one pixel, each taking ``costs[threads]`` on a fake clock."""
    used = []
    for _ in range(count):
        with chooser.call(pixels=1) as threads:
            assert torch.get_num_threads() == threads
            now[0] += costs[threads]
        used.append(threads)
    return used


def test_adaptive_threads_take_one_thread_on_a_busy_machine_and_all_when_idle():
    """Issue 29, with the ms measured on 2 cores (benchmarks/loaded.py): idle 2 threads 30,
    1 thread 48; one core busy 2 threads 66, 1 thread 46."""
    idle, busy = {1: 48.0, 2: 30.0}, {1: 46.0, 2: 66.0}
    now = [0.0]
    chooser = AdaptiveThreads(2, period=4, keep=3, clock=lambda: now[0])
    # the first call is not timed; probes on 1 at calls 3 and 4, then every 4th call
    assert _calls(chooser, now, idle, 12) == [2, 2, 1, 1, 2, 2, 2, 1, 2, 2, 2, 1]
    assert chooser.current == 2
    _calls(chooser, now, busy, 2)  # two slow calls: their median turns it to one thread
    assert chooser.current == 1
    used = _calls(chooser, now, idle, 8)  # idle again: the second probe on 2 wins it back
    assert used == [1, 2, 1, 1, 1, 2, 2, 2] and chooser.current == 2
    single = AdaptiveThreads(1, clock=lambda: now[0])
    assert set(_calls(single, now, idle, 20)) == {1}  # one core: nothing to choose


def test_a_segmenter_with_auto_threads_chooses_per_call(tmp_path):
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=3)
    path = fcnseg.save_weights(tmp_path / "m.pt", model)
    segmenter = Segmenter.from_checkpoint(path, threads="auto")
    assert isinstance(segmenter.threads, AdaptiveThreads)
    image = np.zeros((40, 48, 3), np.uint8)
    for _ in range(segmenter.threads.period):
        assert segmenter.predict(image).shape == (40, 48)
    assert segmenter.threads.calls == segmenter.threads.period
    assert Segmenter.from_checkpoint(path).threads is None
    with pytest.raises(ValueError, match="threads='some'"):
        Segmenter.from_checkpoint(path, threads="some")
