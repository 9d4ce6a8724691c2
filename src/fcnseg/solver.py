"""The solver's choices, each named once: the optimizers, learning-rate schedules and
mixed-precision modes a training run can pick.

Caffe's solver.prototxt calls the first two ``type`` and ``lr_policy``. The training engine
(``fcnseg.training.optim``) implements them and the config (``fcnseg.config``) offers them; this
module sits below both so that neither keeps its own copy of the names.
"""

from __future__ import annotations

__all__ = ["OPTIMIZERS", "SCHEDULES", "AMP_MODES"]

OPTIMIZERS = ("sgd", "adamw")
# fixed: the reference's lr_policy; poly (1 - t/T)^power and cosine decay to 0 at the end
SCHEDULES = ("fixed", "poly", "cosine")
# auto: bf16 or fp16 on CUDA, off on CPU (bf16 pays only on CPUs with bf16 units)
AMP_MODES = ("off", "bf16", "fp16", "auto")
