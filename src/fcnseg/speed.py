"""Fast inference on the CPU: channels-last layout, inference mode, optional bf16 autocast.

Each option leaves the model's function unchanged up to rounding; ``tests/test_speed.py``
checks every one against the plain fp32 forward pass, and ``benchmarks/speed.py``
measures what each gives (docs/BENCHMARKS.md). The defaults are what that benchmark found
fastest on the machine it ran on (2 cores of a CPU with AVX512-BF16 but no AMX):
channels-last on (1.16-1.25x over the default layout for FCN-8s VGG16 at 500 x 500;
0.94-1.54x, within the noise, for EfficientNet-Lite0), bf16 autocast off (there it ran
at 0.6-0.7x of fp32, and a bf16 ``torch.mm`` at half the fp32 rate: without AMX, bf16
does not pay here). Turn bf16 on with ``InferenceOptions(bf16=True)`` on a CPU where it
measures faster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InferenceOptions", "native_bf16", "prepare_model", "fast_forward"]

Batch = torch.Tensor | Mapping[str, torch.Tensor]


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` has bf16 arithmetic (AVX512-BF16 / AMX on a CPU) at all.

    Without it bf16 autocast converts to fp32 and back, always slower than fp32; with it,
    whether bf16 is faster still depends on the CPU: benchmarks/speed.py measures it.
    """
    if torch.device(device).type != "cpu":
        return torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@dataclass(frozen=True)
class InferenceOptions:
    """How ``fast_forward`` runs a model; the defaults were the fastest measured."""

    channels_last: bool = True
    bf16: bool = False  # 0.6-0.7x of fp32 on an AVX512-BF16 CPU without AMX (BENCHMARKS.md)


def prepare_model(model: nn.Module, options: InferenceOptions) -> nn.Module:
    """Convert the weights to the layout the options run in (in place; returns ``model``).

    The convolutions then meet their input in one layout and reorder nothing per call.
    """
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def fast_forward(
    model: nn.Module, batch: Batch, options: InferenceOptions | None = None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """``model(batch)`` as float32 in the default layout, computed as ``options`` say.

    ``batch`` is a tensor, or a dict of tensors by input for multi-input models; the
    result is a tensor, or a dict by task for multi-task models. Runs under
    ``torch.inference_mode`` (no autograd bookkeeping); with bf16 the convolutions and
    matrix products run in bf16 under autocast and the scores come back as float32.
    """
    options = options or InferenceOptions()
    tensors = list(batch.values()) if isinstance(batch, Mapping) else [batch]
    with torch.inference_mode():
        if options.channels_last:
            batch = _apply(batch, _channels_last)
        device = tensors[0].device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=options.bf16):
            scores = model(batch)
        return _apply(scores, lambda s: s.float().contiguous())


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _apply(value: Batch, function: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    if isinstance(value, Mapping):
        return {key: function(tensor) for key, tensor in value.items()}
    return function(value)
