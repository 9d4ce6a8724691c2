"""Multi-task FCNs: one trunk, one FCN head per label set (SIFT Flow, Section 5, Table 5).

The reference's ``siftflow-fcn16s`` is one VGG16 whose ``drop7`` and ``pool4`` feed two
complete FCN-16s heads: ``score_fr_sem`` / ``upscore2_sem`` / ``score_pool4_sem`` /
``upscore16_sem`` for the 33 semantic classes and the same layers with ``_geo`` for the 3
geometric classes (sky, horizontal, vertical), each with its own SoftmaxWithLoss (weight 1,
unnormalised). Here ``heads.semantic`` and ``heads.geometric`` are ordinary ``FCNHead``s
on the shared backbone of an ``FCN`` whose spec names two tasks; the model returns ``{"semantic": N x 33 x H x W, "geometric":
N x 3 x H x W}``, the dict the SIFT Flow reader gives as labels.

The losses (``losses.MultiTaskLoss``) and metrics (``metrics.MultiTaskConfusion``,
``metrics.siftflow_metrics``) live with the others. Evaluation follows the paper: the four metrics for the semantic labels, pixel accuracy for
the geometric ones. The SIFT Flow caveat: some semantic classes never occur in the 200
test images, and the reference notes that its scores "are off b.c. of missing classes;
score manually from the histogram instead" (``siftflow-fcn16s/solve.py``). With
``present_only`` (the default) ``siftflow_metrics`` averages the mean accuracy and the mean
IU over the classes present in the evaluated labels only; a class absent from the labels
but predicted somewhere would otherwise enter the mean IU with IU 0. Pixel accuracy and
f.w. IU do not change (absent classes have no labelled pixels), and predictions of an
absent class still count as errors on the pixels they cover.
"""

from __future__ import annotations

__all__ = ["SIFTFLOW_TASKS", "siftflow_caffe_rename"]

# Task -> classes, in the order of the reference's heads and of the reader's label dict.
SIFTFLOW_TASKS = {"semantic": 33, "geometric": 3}
# The reference's layer-name suffixes.
_CAFFE_SUFFIX = {"_sem": "semantic", "_geo": "geometric"}


def siftflow_caffe_rename(caffe_name: str) -> str:
    """The fcnseg module name of a layer of the reference's SIFT Flow nets, for
    ``fcnseg.weights.convert_caffe(..., rename=siftflow_caffe_rename)``: ``score_fr_sem``
    is ``heads.semantic.score_fr``, ``upscore16_geo`` is ``heads.geometric.upscore16``;
    the trunk's layers keep their names."""
    for suffix, task in _CAFFE_SUFFIX.items():
        if caffe_name.endswith(suffix):
            return f"heads.{task}.{caffe_name.removesuffix(suffix)}"
    return caffe_name
