"""ReLU6 in place, with a backward pass that reads its output instead of a copy of its input.

PyTorch's in-place ``hardtanh_`` (what ``nn.ReLU6(inplace=True)`` runs) saves its *input*
for the backward pass, so under autograd it first clones the tensor it is about to
overwrite: in an EfficientNet-Lite training step on a CPU those clones are about 6% of the
step. The gradient of ``clamp(x, 0, 6)`` is ``grad`` where ``0 < x < 6`` and 0 elsewhere,
and ``0 < x < 6`` holds exactly where ``0 < clamp(x, 0, 6) < 6``, so the output, which
the next layer keeps anyway, gives the same gradient bit for bit without the copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReLU6"]


class _ClampInPlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        out = x.clamp_(0.0, 6.0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, out, 0.0, 6.0)


class ReLU6(nn.Module):
    """``min(max(x, 0), 6)`` in place, as ``nn.ReLU6(inplace=True)`` computes it.

    Under autograd it saves its output rather than a clone of its input (see the module
    docstring); without gradients, and whenever a graph is being traced or compiled
    (ONNX export, ``torch.compile``), it is ``F.relu6``, so exported graphs keep the
    standard operator.
    """

    inplace = True  # it overwrites its input, which the backbone's feature taps check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tracing(x) and x.requires_grad and torch.is_grad_enabled():
            return _ClampInPlace.apply(x)
        return F.relu6(x, inplace=True)

    def extra_repr(self) -> str:
        return "inplace=True"


def _tracing(x) -> bool:
    return (
        isinstance(x, torch.fx.Proxy)  # fx symbolic tracing: fcnseg.speed folds batch norms
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )
