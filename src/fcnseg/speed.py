"""Fast inference on the CPU: folded batch norms, channels-last layout, inference mode,
optional bf16 autocast.

Each option leaves the model's function unchanged up to rounding; ``tests/test_speed.py``
checks every one against the plain fp32 forward pass, and ``benchmarks/speed.py``
measures what each gives (docs/BENCHMARKS.md). The defaults are what that benchmark found
fastest on the machine it ran on (2 cores of a CPU with AVX512-BF16 but no AMX):
channels-last on (1.16-1.25x over the default layout for FCN-8s VGG16 at 500 x 500;
0.94-1.54x, within the noise, for EfficientNet-Lite0), batch norms folded (EfficientNet-
Lite0 FCN-8s at 360 x 480: 1.79x over channels-last alone), bf16 autocast off (there it ran
at 0.6-0.7x of fp32, and a bf16 ``torch.mm`` at half the fp32 rate: without AMX, bf16
does not pay here). Turn bf16 on with ``InferenceOptions(bf16=True)`` on a CPU where it
measures faster.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from .devices import native_cuda_bf16
from .models.backbones import Backbone

__all__ = [
    "AdaptiveThreads",
    "InferenceOptions",
    "native_bf16",
    "fold_batch_norm",
    "prepare_model",
    "compiled",
    "fast_forward",
    "one_torch_thread",
]

Batch = torch.Tensor | Mapping[str, torch.Tensor]


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` has bf16 arithmetic (AVX512-BF16 / AMX on a CPU) at all.

    Without it bf16 autocast converts to fp32 and back, always slower than fp32; with it,
    whether bf16 is faster still depends on the CPU: benchmarks/speed.py measures it.
    """
    if torch.device(device).type != "cpu":
        return torch.device(device).type == "cuda" and native_cuda_bf16()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@dataclass(frozen=True)
class InferenceOptions:
    """How ``fast_forward`` runs a model; the defaults were the fastest measured."""

    channels_last: bool = True
    bf16: bool = False  # 0.6-0.7x of fp32 on an AVX512-BF16 CPU without AMX (BENCHMARKS.md)
    fold_batch_norm: bool = True  # 1.79x for EfficientNet-Lite0 at 360 x 480 (BENCHMARKS.md)
    # torch.compile with inductor freezing (conv + ReLU fused, weights prepacked): 1.34x the
    # textbook FCN-8s VGG16 against 1.11x compiled without freezing; off by default, as each
    # new input size compiles anew (10-15 s) and the prepacked weights take more memory.
    compile: bool = False


def prepare_model(model: nn.Module, options: InferenceOptions) -> nn.Module:
    """Convert the weights to the layout the options run in (in place; returns ``model``).

    The convolutions then meet their input in one layout and reorder nothing per call.
    With ``fold_batch_norm`` the backbone's batch norms are folded into their convolutions
    (``fold_batch_norm``): the model is then for inference only.
    """
    if options.fold_batch_norm:
        fold_batch_norm(model)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def fold_batch_norm(model: nn.Module) -> int:
    """Fold each backbone batch norm that reads a convolution's output (and nothing else
    reads it) into that convolution, in place; the number folded.

    In eval mode ``bn(conv(x))`` is ``conv'(x)`` with the weights scaled by
    gamma / sqrt(var + eps) per output channel and the bias shifted: one pass over the
    activations less per pair, equal up to rounding. The pairs are found in the
    backbone's traced graph (``torch.fx``), so no layer naming is assumed; a backbone that
    cannot be traced (data-dependent control flow) is left as it is. The batch norms
    become ``nn.Identity``: the model is then for inference only.
    """
    folded = 0
    for backbone in [module for module in model.modules() if isinstance(module, Backbone)]:
        try:
            graph = torch.fx.symbolic_trace(backbone).graph
        except (torch.fx.proxy.TraceError, TypeError, RuntimeError):
            continue  # unfolded is still exact, only slower
        calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
        for node in graph.nodes:
            pair = _conv_then_norm(backbone, node, calls)
            if pair is not None:
                _fold_into(*pair)
                backbone.set_submodule(node.target, nn.Identity())
                folded += 1
    return folded


def _conv_then_norm(backbone: nn.Module, node, calls: Counter):
    """(conv, norm) when ``node`` is an eval-mode batch norm applied to a convolution's
    only use; both modules called once in the graph. Else None."""
    if node.op != "call_module" or not node.args or node.args[0].op != "call_module":
        return None
    norm, source = backbone.get_submodule(node.target), node.args[0]
    conv = backbone.get_submodule(source.target)
    if not isinstance(norm, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d):
        return None
    if norm.training or not norm.track_running_stats or len(source.users) != 1:
        return None
    if calls[node.target] != 1 or calls[source.target] != 1:
        return None
    return conv, norm


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shift = (bias - norm.running_mean) * scale
    if norm.affine:
        shift = shift + norm.bias
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(shift, requires_grad=False)


def compiled(model: nn.Module, options: InferenceOptions) -> nn.Module:
    """``model`` compiled for inference as ``options`` ask, or ``model`` itself."""
    if not options.compile:
        return model
    return torch.compile(model, options={"freezing": True})


def fast_forward(
    model: nn.Module, batch: Batch, options: InferenceOptions | None = None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """``model(batch)`` as float32, computed as ``options`` say.

    ``batch`` is a tensor, or a dict of tensors by input for multi-input models; the
    result is a tensor, or a dict by task for multi-task models. Runs under
    ``torch.inference_mode`` (no autograd bookkeeping); with bf16 the convolutions and
    matrix products run in bf16 under autocast and the scores come back as float32. The
    scores keep the layout the model computed them in (channels-last by default): a copy
    into the default layout cost 2.3 ms of a 31 ms CamVid frame, and the arg-max reads
    either (benchmarks/end_to_end.py).
    """
    options = options or InferenceOptions()
    tensors = list(batch.values()) if isinstance(batch, Mapping) else [batch]
    with torch.inference_mode():
        if options.channels_last:
            batch = _apply(batch, _channels_last)
        device = tensors[0].device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=options.bf16):
            scores = model(batch)
        return _apply(scores, lambda s: s.float())


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _apply(value: Batch, function: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    if isinstance(value, Mapping):
        return {key: function(tensor) for key, tensor in value.items()}
    return function(value)


class AdaptiveThreads:
    """torch's compute threads for inference, chosen by measurement as the calls come.

    Where another process takes a core, torch's OpenMP threads wait at every barrier for a
    partner the kernel has given away. Measured on 2 cores (benchmarks/loaded.py, a CamVid
    frame through FCN-8s Lite0): 30 ms on 2 threads and 48 on 1 idle, 66 ms on 2 and 46 on
    1 with one core busy. (OpenMP's passive wait policy helped the loaded case but cost the
    idle one 36%, and training 65%.) Calls run on ``current`` threads, ``most`` at first;
    the 3rd and 4th calls and every ``period``-th one run on the other count (1 or
    ``most``), and the count whose recent calls (the last ``keep`` of each, the first call
    of all left out) took less time per pixel, by ``margin``, is kept: a busy core turns it
    to one thread within a few calls, an idle machine back to ``most`` within a few probes.
    Safe to share between threads (the choice is locked; torch's count is per process).
    """

    def __init__(
        self,
        most: int | None = None,
        *,
        period: int = 16,
        keep: int = 5,
        margin: float = 0.9,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.most = max(1, most or os.cpu_count() or 1)
        self.current, self.period, self.margin, self.clock = self.most, period, margin, clock
        self.calls = 0
        self.seconds: dict[int, deque[float]] = {
            1: deque(maxlen=keep),
            self.most: deque(maxlen=keep),
        }
        self._lock = threading.Lock()

    @contextmanager
    def call(self, pixels: int) -> Iterator[int]:
        """Run one call of ``pixels`` input pixels on the threads chosen (yielded)."""
        with self._lock:
            self.calls += 1
            early = self.calls in (3, 4)  # two probes soon after the start
            probe = self.most > 1 and (early or self.calls % self.period == 0)
            threads = self._other() if probe else self.current
            timed = self.calls > 1  # the first call builds its kernels: slow on any count
        torch.set_num_threads(threads)
        started = self.clock()
        yield threads
        per_pixel = (self.clock() - started) / max(pixels, 1)
        if timed:
            with self._lock:
                self.seconds[threads].append(per_pixel)
                self._choose()

    def _other(self) -> int:
        return 1 if self.current == self.most else self.most

    def _choose(self) -> None:
        mine, other = self.seconds[self.current], self.seconds[self._other()]
        if min(len(mine), len(other)) < 2:
            return
        if statistics.median(other) < self.margin * statistics.median(mine):
            self.current = self._other()


class _OneThread:
    """The state of ``one_torch_thread``: how many callers are inside, and the count to
    give back when the last leaves."""

    lock = threading.Lock()
    inside = 0
    saved = 1


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's own work on one thread meanwhile, process-wide; concurrent and nested uses
    share the setting, and torch's count comes back when the last one ends.

    For the little torch does beside an ONNX engine (normalising the input, the arg-max of
    scores): after a parallel op torch's idle OpenMP threads spin for a while on the cores
    the engine's threads start on next. ``Segmenter.predict`` on onnxruntime fp32 took 52.7
    ms for a CamVid frame after a two-thread normalisation, against 28 ms for the engine
    alone (benchmarks/end_to_end.py)."""
    with _OneThread.lock:
        if _OneThread.inside == 0:
            _OneThread.saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _OneThread.inside += 1
    try:
        yield
    finally:
        with _OneThread.lock:
            _OneThread.inside -= 1
            if _OneThread.inside == 0:
                torch.set_num_threads(_OneThread.saved)
