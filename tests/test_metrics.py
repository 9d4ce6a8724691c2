"""The paper's four metrics against hand-computed matrices and a naive implementation."""

import math

import numpy as np
import pytest
import torch

from fcnseg.metrics import ConfusionMatrix, class_labels, json_safe, metrics_from_matrix
from fcnseg.training.distributed import Context
from fcnseg.training.evaluate import eval_loader


def _confusion(labels, preds, num_classes=4):
    confusion = ConfusionMatrix(num_classes)
    confusion.update(torch.tensor(preds), torch.tensor(labels))
    return confusion


def test_hand_computed_example():
    # labels 0 0 1 1 2 255 predicted 0 1 1 1 0 2; class 3 is neither labelled nor predicted
    confusion = _confusion([0, 0, 1, 1, 2, 255], [0, 1, 1, 1, 0, 2])
    assert confusion.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    m = confusion.compute()
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert m["acc"][:3] == pytest.approx([1 / 2, 1.0, 0.0]) and math.isnan(m["acc"][3])
    assert m["mean_acc"] == pytest.approx(1 / 2)  # (1/2 + 1 + 0) / 3: class 3 left out
    # unions: class 0: 2 + 2 - 1 = 3, class 1: 2 + 3 - 2 = 3, class 2: 1 + 0 - 0 = 1
    assert m["iu"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(m["iu"][3])
    assert m["mean_iu"] == pytest.approx(1 / 3)
    assert m["fw_iu"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 1 * 0) / 5)


def test_predicted_but_unlabelled_class_counts_as_zero_iu():
    m = _confusion([0, 0, 1, 1], [0, 3, 1, 1]).compute()
    assert m["iu"][3] == 0.0 and math.isnan(m["acc"][3])
    assert m["mean_iu"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # class 2 absent: left out
    assert m["mean_acc"] == pytest.approx((1 / 2 + 1) / 2)


def test_perfect_and_empty():
    perfect = _confusion([0, 1, 2, 3], [0, 1, 2, 3]).compute()
    assert [perfect[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")] == [1, 1, 1, 1]
    empty = _confusion([255, 255], [0, 1]).compute()
    assert all(math.isnan(empty[k]) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"))
    assert json_safe(empty)["mean_iu"] is None and json_safe(empty)["iu"] == [None] * 4


def test_scores_are_taken_by_argmax_and_batches_accumulate():
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 2] = 1.0  # every pixel predicted class 2
    labels = torch.tensor([[[2, 2], [0, 255]], [[1, 2], [2, 2]]])
    confusion = ConfusionMatrix(3)
    confusion.update(logits[:1], labels[:1])
    confusion.update(logits[1:], labels[1:])
    assert confusion.matrix[:, 2].tolist() == [1, 1, 5] and confusion.matrix.sum() == 7
    other = ConfusionMatrix(3)
    other.update(logits, labels)
    assert torch.equal(other.matrix, confusion.matrix)
    assert torch.equal(ConfusionMatrix(3).merge(other).matrix, other.matrix)


def _naive(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
    """Straight from the definitions, class by class with boolean masks."""
    keep = labels != 255
    labels, preds = labels[keep], preds[keep]
    acc, iu, weighted = [], [], 0.0
    for c in range(num_classes):
        labelled = np.sum(labels == c)
        predicted = np.sum(preds == c)
        hit = np.sum((labels == c) & (preds == c))
        if labelled:
            acc.append(hit / labelled)
        if labelled + predicted - hit:
            iu.append(hit / (labelled + predicted - hit))
            weighted += labelled * hit / (labelled + predicted - hit)
    return {
        "pixel_acc": np.mean(labels == preds),
        "mean_acc": np.mean(acc),
        "mean_iu": np.mean(iu),
        "fw_iu": weighted / len(labels),
    }


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_implementation_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 12))
    labels = rng.integers(0, num_classes, size=(3, 17, 23))
    labels[rng.random(labels.shape) < 0.1] = 255
    # predictions right 60% of the time; some classes never predicted, some never labelled
    preds = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, num_classes))
    preds = np.where(preds == 255, 0, preds)
    labels[labels == num_classes - 1] = 255
    confusion = ConfusionMatrix(num_classes)
    for i in range(3):
        confusion.update(torch.from_numpy(preds[i]), torch.from_numpy(labels[i]))
    expected = _naive(labels, preds, num_classes)
    got = confusion.compute()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_metrics_from_matrix_is_the_definition():
    matrix = torch.tensor([[5, 1], [2, 2]])
    m = metrics_from_matrix(matrix)
    assert m["pixel_acc"] == pytest.approx(7 / 10)
    assert m["iu"] == pytest.approx([5 / 8, 2 / 5])


def test_bad_input():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        confusion.update(torch.tensor([5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="at least 1"):
        ConfusionMatrix(0)


def test_the_matrix_counts_where_the_predictions_are_without_waiting_for_them():
    """On the meta device every read by the host (``.item()``, ``bool``, ``.cpu()``, a
    ``bincount`` sizing its output) is an error: updates that pass there never make a GPU
    wait, and the matrix stays on the device of the predictions."""
    confusion = ConfusionMatrix(4)
    scores = torch.randn(2, 4, 8, 8, device="meta")
    labels = torch.randint(0, 4, (2, 8, 8), device="meta")
    for _ in range(3):
        confusion.update(scores, labels)
    assert confusion.matrix.device.type == "meta"


def test_device_counting_is_the_bincount_of_the_definition():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (3, 17, 19), generator=generator)
    labels[:, :4] = 255  # ignored
    labels[:, -2:] = 7  # outside the class range: ignored as well
    predictions = torch.randint(0, 5, (3, 17, 19), generator=generator)
    confusion = ConfusionMatrix(5)
    confusion.update(predictions, labels)
    valid = labels < 5
    expected = torch.bincount(labels[valid] * 5 + predictions[valid], minlength=25).view(5, 5)
    assert torch.equal(confusion.matrix, expected)
    assert torch.equal(confusion.reduced(), expected) and confusion.reduced().device.type == "cpu"


def test_the_evaluation_loader_pins_memory_for_a_gpu():
    data = list(range(4))
    assert eval_loader(data, Context(device=torch.device("cuda", 0))).pin_memory
    assert not eval_loader(data, Context()).pin_memory


@pytest.mark.parametrize("dim", [0, 1])
def test_class_labels_are_the_argmax_with_its_ties(dim):
    """``max(dim).indices`` (several times faster on the CPU) gives argmax's labels, the
    first of equal maxima included."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (3, 5, 17, 23), generator=generator).float()  # many ties
    scores = scores[0] if dim == 0 else scores
    assert torch.equal(class_labels(scores, dim), scores.argmax(dim))
    channels_last = torch.randn(2, 11, 9, 7).contiguous(memory_format=torch.channels_last)
    assert torch.equal(class_labels(channels_last), channels_last.argmax(1))
