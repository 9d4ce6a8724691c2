"""Everything that scores is one ``Scorer``: the FCN, its ONNX export on an engine and a
Segmenter's scoring (what ``fcnseg eval --engine`` runs) take inputs by name and give
scores by task, for one task as for several; a single value is left to the public edges
(the FCN's default forward, ``Segmenter.predict``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slim_models import model_inputs, raw_images
from test_engines import tiny_backbone, tiny_checkpoint  # noqa: F401 (autouse: registers the tiny net)

from fcnseg.commands.evaluate import _Scoring
from fcnseg.engines import cached_onnx, onnx_module
from fcnseg.inference import Segmenter
from fcnseg.modelfile import read_record
from fcnseg.scoring import Scorer, score

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["plain", "siftflow"])
def test_the_fcn_an_onnx_engine_and_a_segmenter_score_by_task(tmp_path, kind) -> None:
    path = tiny_checkpoint(tmp_path / "model.pt", kind)
    record = read_record(path, what="checkpoint")
    spec = record.spec
    scorers = {
        "fcn": record.build().eval(),
        "onnxruntime": onnx_module("onnxruntime", cached_onnx(path, record), spec, 1),
        "segmenter": _Scoring(Segmenter.from_checkpoint(path), "engine torch"),
    }
    inputs = model_inputs(spec, 2, 45, 61)
    with torch.no_grad():
        expected = score(scorers["fcn"], inputs)
    for name, scorer in scorers.items():
        assert isinstance(scorer, Scorer), name
        with torch.no_grad():
            scores = score(scorer, inputs)
        assert list(scores) == list(spec.task_names), name
        for task, classes in spec.task_classes.items():
            assert scores[task].shape == (2, classes, 45, 61), (name, task)
            torch.testing.assert_close(scores[task], expected[task], atol=1e-4, rtol=1e-4)


def test_one_task_is_one_value_at_the_public_edges_only(tmp_path) -> None:
    path = tiny_checkpoint(tmp_path / "model.pt", "plain")
    segmenter = Segmenter.from_checkpoint(path)
    model = read_record(path, what="checkpoint").build().eval()
    (task,) = model.spec.task_names
    inputs = model_inputs(model.spec, 1, 45, 61)
    with torch.no_grad():
        assert torch.equal(model(inputs), score(model, inputs)[task])
    image = raw_images(model.spec, 45, 61)["image"]
    labels, probs = segmenter.predict(image, probabilities=True)
    by_task, probs_by_task = segmenter.label_maps(image, probabilities=True)
    assert isinstance(labels, np.ndarray) and list(by_task) == [task]
    assert np.array_equal(labels, by_task[task]) and np.array_equal(probs, probs_by_task[task])
    plain, none = segmenter.label_maps(image)
    assert none is None and np.array_equal(plain[task], labels)
