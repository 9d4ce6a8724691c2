"""Weight averaging (ema_decay): the arithmetic, and a run that validates, keeps and resumes
the average while training exactly as without it."""

import json

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fcnseg.config import ConfigError, TrainConfig
from fcnseg.data import SyntheticShapes, eval_transforms
from fcnseg.training.average import WeightAverage, decay_at
from fcnseg.training.checkpoint import load_checkpoint
from fcnseg.training.distributed import Context
from fcnseg.training.evaluate import eval_loader, evaluate
from fcnseg.training.stages import train


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))


def test_decay_is_short_early_then_as_configured():
    assert decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert decay_at(0.999, 100_000) == 0.999


class _LerpCount(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += "lerp" in getattr(func, "__name__", "")
        return func(*args, **(kwargs or {}))


def test_update_moves_every_weight_in_one_call_as_each_on_its_own_would():
    """One foreach lerp for all weights and statistics, bit for bit the per-tensor lerp."""
    torch.manual_seed(0)
    net = nn.Sequential(_net(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    average = WeightAverage(net, decay=0.9)
    reference = {key: value.clone() for key, value in average.state.items()}
    for step in range(1, 6):
        with torch.no_grad():
            for value in net.state_dict().values():
                value.add_(torch.randn_like(value.float()).to(value.dtype))
        with _LerpCount() as launches:
            average.update(net, step)
        assert launches.calls == 1
        weight = 1.0 - decay_at(0.9, step)
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                reference[key].lerp_(value, weight)
            else:
                reference[key].copy_(value)
        assert all(torch.equal(average.state[k], reference[k]) for k in reference)


def test_update_is_the_moving_average_and_copies_counters():
    net = _net()
    average = WeightAverage(net, decay=0.5)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for value in net.state_dict().values():
            value.add_(1)  # every entry, num_batches_tracked included
    average.update(net, step=100)  # decay_at(0.5, 100) = 0.5
    for key, value in net.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(average.state[key], 0.5 * start[key] + 0.5 * value)
        else:
            assert torch.equal(average.state[key], value), key


def test_applied_holds_the_average_inside_and_the_trained_weights_after():
    net = _net()
    average = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net[0].weight.mul_(3)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    with average.applied(net):
        assert not torch.equal(net[0].weight, trained["0.weight"])
        assert torch.equal(net[0].weight, average.state["0.weight"])
    for key, value in net.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_ema_decay_outside_zero_to_one_is_refused():
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0).validate()
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(_net(), decay=0.0)


def _tiny(tmp_path, name, **overrides) -> TrainConfig:
    values = dict(
        model="fcn8s_efficientnet_lite0",
        train_options={"size": 32, "num_images": 8},
        val_options={"size": 32, "num_images": 3},
        batch_size=2,
        max_iters=6,
        optimizer="sgd",
        lr=1e-2,
        schedule="fixed",  # a run stopped early and resumed follows the same lr
        warmup_iters=0,
        scale_range=None,
        jitter=False,
        num_workers=0,
        overlays=0,
        deterministic=True,
        threads=1,
        output=str(tmp_path),
        name=name,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_a_run_keeps_the_validated_average_and_trains_as_without_it(tmp_path):
    plain = train(_tiny(tmp_path, "plain"))
    averaged = train(_tiny(tmp_path, "ema", ema_decay=0.8))
    last = load_checkpoint(averaged.last_checkpoint)
    reference = load_checkpoint(plain.last_checkpoint).state_dict

    trained = last.training["trained_state"]  # averaging changes no step of training
    for key, value in reference.items():
        assert torch.equal(trained[key], value), key
    assert any(not torch.equal(last.state_dict[k], trained[k]) for k in trained)

    model = last.build()  # the saved weights are the ones validated
    val = SyntheticShapes("val", eval_transforms(model.normalization), size=32, num_images=3)
    confusion = evaluate(model, eval_loader(val, Context()))["semantic"]
    assert torch.equal(last.confusion["semantic"], confusion.matrix)

    lines = (averaged.run_dir / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    closing = [r for r in records if r["event"] == "trained"]
    assert [r["iteration"] for r in closing] == [6]
    summary = json.loads((averaged.run_dir / "metrics.json").read_text())
    assert summary["trained"]["mean_iu"] == closing[0]["mean_iu"]
    plain_summary = json.loads((plain.run_dir / "metrics.json").read_text())
    assert summary["trained"]["mean_iu"] == plain_summary["last"]["mean_iu"]


def test_a_resumed_run_keeps_its_average(tmp_path):
    whole = train(_tiny(tmp_path, "whole", ema_decay=0.8))
    train(_tiny(tmp_path, "broken", ema_decay=0.8, max_iters=3))
    resumed = train(_tiny(tmp_path, "broken", ema_decay=0.8), resume=True)
    a, b = load_checkpoint(whole.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a.training["iteration"] == b.training["iteration"] == 6
    for key, value in a.state_dict.items():
        assert torch.equal(b.state_dict[key], value), f"average {key}"
    for key, value in a.training["trained_state"].items():
        assert torch.equal(b.training["trained_state"][key], value), f"trained {key}"
