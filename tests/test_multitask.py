"""SIFT Flow's two-headed FCN: its own contract, the weighted losses and per-task metrics."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from slim_models import SLIM, slim_vgg16
from torch import nn

import fcnseg
from fcnseg.losses import MultiTaskLoss
from fcnseg.metrics import ConfusionMatrix, MultiTaskConfusion, siftflow_metrics
from fcnseg.models import FCN, ModelSpec, SpecError
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.multitask import SIFTFLOW_TASKS, siftflow_caffe_rename
from fcnseg.training.evaluate import evaluate

TASKS = {"semantic": 5, "geometric": 3}


@pytest.fixture(scope="module", autouse=True)
def slim_backbone():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES, SLIM, slim_vgg16)
        yield


def slim_multitask(seed: int = 0, variant: str = "16s") -> FCN:
    """The two-headed net on a VGG16 with a few channels (the reference's geometry is
    checked on the full net below, without running it)."""
    torch.manual_seed(seed)
    model = fcnseg.build_model(ModelSpec(SLIM, variant, tasks=TASKS, geometry="aligned"))
    for module in model.heads.modules():  # score layers start at zero; make them matter
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.normal_(module.bias, std=0.1)
    return model


# ----------------------------------------------------------------------------- the contract


@pytest.fixture(scope="module")
def model():
    return slim_multitask()


def test_outputs_one_map_per_task_at_input_size(model):
    model.eval()
    with torch.no_grad():
        for size in [(1, 1), (37, 53), (64, 64)]:
            out = model(torch.randn(1, 3, *size))  # several tasks: a dict, always
            assert list(out) == ["semantic", "geometric"]
            assert out["semantic"].shape == (1, 5, *size)
            assert out["geometric"].shape == (1, 3, *size)


def test_backward_reaches_the_trunk_and_both_heads(model):
    model.train()
    model.zero_grad()
    out = model(torch.randn(2, 3, 37, 41))
    (out["semantic"].square().mean() + out["geometric"].square().mean()).backward()
    assert model.backbone.conv1_1.weight.grad.abs().sum() > 0
    for task in TASKS:
        head = model.heads[task]
        assert head.score_fr.weight.grad.abs().sum() > 0
        assert head.score_pool4.weight.grad.abs().sum() > 0
        assert head.upscore2.weight.grad is None  # fixed bilinear, as the reference


def test_eval_is_deterministic_and_state_dict_round_trips(model):
    model.eval()
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        first, second = model(x), model(x)
    for task in TASKS:
        torch.testing.assert_close(first[task], second[task], rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = slim_multitask(seed=1).eval()
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        again = clone(x)
    for task in TASKS:
        torch.testing.assert_close(again[task], first[task], rtol=0, atol=0)


def test_each_head_is_an_fcn_on_the_shared_trunk(model):
    model.eval()
    x = torch.randn(1, 3, 29, 31)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)
        for task in TASKS:
            alone = model.heads[task](features, (29, 31))
            torch.testing.assert_close(out[task], alone, rtol=0, atol=0)
    assert model.task_heads() == dict(model.heads.items()) and not hasattr(model, "head")


# ----------------------------------------------------------------------------- the SIFT Flow net


def test_siftflow_fcn16s_is_the_reference_net():
    with torch.device("meta"):
        net = fcnseg.build_model("fcn16s_vgg16_siftflow")
    assert net.name == "fcn16s_vgg16_siftflow" and net.num_classes == SIFTFLOW_TASKS
    assert net.num_classes == {"semantic": 33, "geometric": 3}
    state = net.state_dict()
    assert state["heads.semantic.score_fr.weight"].shape == (33, 4096, 1, 1)
    assert state["heads.geometric.score_pool4.weight"].shape == (3, 512, 1, 1)
    assert state["heads.geometric.upscore16.weight"].shape == (3, 3, 32, 32)
    assert net.heads["semantic"].crop_offsets() == {"score_pool4c": 5, "score": 27}
    # every layer of the reference's siftflow-fcn16s/net.py has its place
    reference = ["conv1_1", "conv5_3", "fc6", "fc7"] + [
        f"{layer}{suffix}"
        for layer in ("score_fr", "upscore2", "score_pool4", "upscore16")
        for suffix in ("_sem", "_geo")
    ]
    targets = {key.rsplit(".", 1)[0] for key in state}
    for name in reference:
        renamed = siftflow_caffe_rename(name)
        assert renamed in targets or f"backbone.{renamed}" in targets, name
    assert siftflow_caffe_rename("upscore16_geo") == "heads.geometric.upscore16"


def test_multitask_models_by_name():
    siftflow = {name for name in fcnseg.list_models() if len(fcnseg.model_info(name).tasks) > 1}
    assert siftflow == {f"fcn{v}_vgg16_siftflow" for v in ("32s", "16s", "8s")}
    with torch.device("meta"):
        net = fcnseg.build_model("fcn8s_vgg16_siftflow", geometry="aligned")
        other = fcnseg.build_model("fcn8s_resnet18", tasks={"semantic": 4, "depth_bins": 6})
    assert net.heads["geometric"].score_stride == 8
    assert other.num_classes == {"semantic": 4, "depth_bins": 6}  # any model, any tasks
    with pytest.raises(ValueError, match="did you mean fcn16s_vgg16_siftflow"):
        fcnseg.build_model("fcn16s_vgg_siftflow")
    with pytest.raises(SpecError, match="tasks=\\{name: classes\\}"):
        fcnseg.build_model("fcn8s_vgg16_siftflow", num_classes=33)


# ----------------------------------------------------------------------------- losses


def test_loss_is_the_weighted_sum_of_the_task_losses():
    torch.manual_seed(0)
    logits = {"semantic": torch.randn(2, 5, 6, 7), "geometric": torch.randn(2, 3, 6, 7)}
    labels = {"semantic": torch.randint(0, 5, (2, 6, 7)), "geometric": torch.randint(0, 3, (2, 6, 7))}  # fmt: skip
    labels["semantic"][0, 0] = 255  # ignored
    semantic = F.cross_entropy(logits["semantic"], labels["semantic"], ignore_index=255, reduction="sum")  # fmt: skip
    geometric = F.cross_entropy(logits["geometric"], labels["geometric"], reduction="sum")
    reference = MultiTaskLoss()  # the reference: both weight 1, summed over pixels
    torch.testing.assert_close(reference(logits, labels), semantic + geometric)
    weighted = MultiTaskLoss({"semantic": 1.0, "geometric": 0.25}, reduction="sum")
    torch.testing.assert_close(weighted(logits, labels), semantic + 0.25 * geometric)
    parts = weighted.components(logits, labels)
    torch.testing.assert_close(parts["geometric"], geometric)
    with pytest.raises(ValueError, match="labels = \\['semantic', 'geometric'\\]"):
        reference(logits, labels["semantic"])
    with pytest.raises(ValueError, match="not among the tasks"):
        MultiTaskLoss(class_weights={"depth": [1.0]})


# ----------------------------------------------------------------------------- metrics


def _confusions(semantic_pairs, geometric_pairs):
    confusion = MultiTaskConfusion({"semantic": 4, "geometric": 3})
    predictions = {
        "semantic": torch.tensor([p for _, p in semantic_pairs]),
        "geometric": torch.tensor([p for _, p in geometric_pairs]),
    }
    labels = {
        "semantic": torch.tensor([t for t, _ in semantic_pairs]),
        "geometric": torch.tensor([t for t, _ in geometric_pairs]),
    }
    confusion.update(predictions, labels)
    return confusion


def test_semantic_means_exclude_classes_absent_from_the_labels():
    """Class 3 never occurs in the labels but is predicted once; class 2 neither occurs nor
    is predicted. (label, prediction) pairs:"""
    semantic = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 3), (1, 1)]
    geometric = [(0, 0), (1, 1), (2, 2), (2, 1)]
    confusion = _confusions(semantic, geometric)
    # hand computation: n = [[2,1,0,0],[0,2,0,1],[0,0,0,0],[0,0,0,0]]
    iu0, iu1 = 2 / 3, 2 / 4  # class 0: 2 / (3 + 2 - 2); class 1: 2 / (3 + 3 - 2)
    plain = siftflow_metrics(confusion, present_only=False)["semantic"]
    assert plain["mean_iu"] == pytest.approx((iu0 + iu1 + 0.0) / 3)  # class 3: IU 0
    caveat = siftflow_metrics(confusion)["semantic"]
    assert caveat["present"] == [0, 1]
    assert caveat["mean_iu"] == pytest.approx((iu0 + iu1) / 2)
    assert caveat["mean_acc"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert caveat["pixel_acc"] == pytest.approx(4 / 6) == plain["pixel_acc"]
    assert caveat["fw_iu"] == pytest.approx((3 * iu0 + 3 * iu1) / 6) == plain["fw_iu"]
    assert math.isnan(caveat["iu"][3]) and plain["iu"][3] == 0.0
    geo = siftflow_metrics(confusion)["geometric"]
    assert geo["pixel_acc"] == pytest.approx(3 / 4)  # Table 5's geometric accuracy
    assert "present" not in geo


def test_metrics_accept_plain_confusion_matrices():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]))
    assert siftflow_metrics({"geometric": matrix})["geometric"]["pixel_acc"] == 1.0
    with pytest.raises(ValueError, match="no predictions or labels"):
        MultiTaskConfusion({"semantic": 2}).update({}, {})


def test_evaluation_counts_every_labelled_pixel_of_each_task(model):
    image = torch.randn(1, 3, 9, 11)
    with torch.no_grad():
        predicted = {task: s.argmax(1) for task, s in model.eval()(image).items()}
    labels = {task: p.clone() for task, p in predicted.items()}
    labels["semantic"][0, 0, :] = 255  # 11 ignored pixels
    model.train()
    confusion = evaluate(model, [(image, labels)])
    assert model.training  # put back as it was
    metrics = siftflow_metrics(confusion)
    assert metrics["semantic"]["pixel_acc"] == 1.0 and metrics["geometric"]["pixel_acc"] == 1.0
    assert int(confusion["semantic"].matrix.sum()) == 9 * 11 - 11
