"""What to do when the GPU runs out of memory: the phase that ran out, and what to lower.

torch's ``OutOfMemoryError`` is many lines of allocator figures; the user needs which part of
the work did not fit and the setting that makes it fit. The phase is read from the functions
the error passed through.
"""

from __future__ import annotations

import traceback

__all__ = ["out_of_memory_advice"]

# (function on the traceback, the phase it runs, what to lower there), the outermost first
_PHASES = (
    (
        "validate",
        "validation",
        "lower val_batch_size (1 evaluates one whole image at a time), or validate on "
        "smaller images",
    ),
    (
        "train_step",
        "a training step",
        "lower batch_size or crop_size, or set activation_checkpointing = true",
    ),
    (
        "evaluate",
        "evaluation",
        "evaluate on the CPU (--device cpu), or on smaller images",
    ),
)


def out_of_memory_advice(error: BaseException, command: str) -> str:
    """One line: which phase of ``command`` ran out of GPU memory and what to lower."""
    functions = {frame.f_code.co_name for frame, _ in traceback.walk_tb(error.__traceback__)}
    for function, phase, fix in _PHASES:
        if function in functions:
            return f"the GPU ran out of memory in {phase} (fcnseg {command}): {fix}"
    return (
        f"the GPU ran out of memory in fcnseg {command}: use smaller images, or run on the "
        "CPU (--device cpu)"
    )
