"""The training loop on tiny synthetic runs: the run folder, recipes, staging, stopping."""

import dataclasses
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fcnseg import build_model, losses
from fcnseg.builder import resolve_spec
from fcnseg.config import ConfigError, TrainConfig
from fcnseg.losses import SegmentationLoss
from fcnseg.modelfile import record_of
from fcnseg.solver import OPTIMIZERS, SCHEDULES
from fcnseg.training import Hook, distributed, loop
from fcnseg.training import checkpoint as ckpt
from fcnseg.training.initialize import build_model_for
from fcnseg.training.optim import (
    DECAY_OF,
    OPTIMIZER_OF,
    LRSchedule,
    amp_dtype,
    build_optimizer,
    param_groups,
)
from fcnseg.training.setup import model_spec
from fcnseg.training.stages import NonFiniteLossError, train


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(tmp_path, **overrides) -> TrainConfig:
    """FCN-8s on 32 x 32 synthetic images: a few seconds a run."""
    values = dict(
        model="fcn8s_efficientnet_lite0",
        train_options={"size": 32, "num_images": 8},
        val_options={"size": 32, "num_images": 3},
        epochs=2,
        batch_size=2,
        warmup_iters=2,
        scale_range=None,
        jitter=False,
        num_workers=0,
        log_every=1,
        overlays=2,
        output=str(tmp_path),
        name="run",
        threads=1,  # a shared 2-core machine runs one thread far faster than two
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_a_run_folder_holds_everything(tmp_path):
    config = tiny(tmp_path, class_weights="median", loss_sampling=0.25, checkpoint_every=3)
    result = train(config)
    run = tmp_path / "run"
    assert result.run_dir == run and result.iterations == 8 and result.stopped == "finished"
    for name in ("config.json", "log.jsonl", "last.pt", "best.pt", "metrics.json"):
        assert (run / name).is_file(), name
    for name in ("curves.png", "confusion.png", "overlays/000.png", "overlays/001_overlay.png"):
        assert Image.open(run / name).size[0] > 0, name
    saved = json.loads((run / "config.json").read_text())
    assert saved["batch_size"] == 2 and saved["schedule"] == "poly"  # resolved by the recipe
    assert len(saved["class_weights"]) == 7  # median frequencies, computed once and kept
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["iteration"] for r in train_records] == list(range(1, 9))
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["images_per_s"] > 0 for r in train_records)
    parts = ("data", "to_device", "forward", "backward", "sync", "optimizer", "after_step")
    for record in train_records:  # where each step's time went (issue 31)
        assert set(parts) <= set(record["step_parts"]) and min(record["step_parts"].values()) >= 0
        assert record["step_parts"]["forward"] > 0 and record["step_parts"]["backward"] > 0
    assert any("log" in r["step_parts"] for r in train_records)  # the hooks after a step
    val = [r for r in records if r["event"] == "val"]
    assert [r["iteration"] for r in val] == [4, 8]  # once per epoch
    best = ckpt.load_checkpoint(run / "best.pt")
    assert best.metrics["mean_iu"] == pytest.approx(max(r["mean_iu"] for r in val))
    assert best.metrics["mean_iu"] == pytest.approx(result.best_mean_iu)
    assert best.confusion["semantic"].shape == (7, 7) and "optimizer" not in best.training
    last = ckpt.load_checkpoint(run / "last.pt")
    assert last.training["iteration"] == 8 and last.training["finished"]
    summary = json.loads((run / "metrics.json").read_text())
    assert set(summary["last"]) >= {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "iu", "acc"}
    assert 0 <= summary["last"]["mean_iu"] <= 1 and "fractions of 1" in summary["units"]


def test_paper_recipe_parameter_groups():
    config = TrainConfig(recipe="paper", model="fcn8s_efficientnet_lite0").resolved()
    model = build_model(config.model, num_classes=7)
    groups = {group["name"]: group for group in param_groups(model, config)}
    assert groups["weight"]["lr"] == 1e-14 and groups["weight"]["weight_decay"] == 5e-4
    assert groups["bias"]["lr"] == 2e-14 and groups["bias"]["weight_decay"] == 0
    assert groups["norm"]["weight_decay"] == 0
    grouped = {id(p) for group in groups.values() for p in group["params"]}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in grouped for p in frozen)  # fixed deconvolutions
    assert len(grouped) == sum(1 for p in model.parameters() if p.requires_grad)


def test_schedules():
    poly = LRSchedule("poly", total=100, warmup=10, power=0.9)
    assert poly(0) == pytest.approx(0.001) and poly(5) == pytest.approx(
        (0.001 + 0.999 * 0.5) * 0.95**0.9
    )
    assert poly(50) == pytest.approx(0.5**0.9) and poly(100) == 0.0
    cosine = LRSchedule("cosine", total=100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0)
    assert LRSchedule("fixed", total=100)(77) == 1.0


def test_every_solver_choice_has_one_implementation():
    """The config offers the names of ``fcnseg.solver``; the engine implements each one."""
    assert set(OPTIMIZER_OF) == set(OPTIMIZERS) and set(DECAY_OF) == set(SCHEDULES)
    model = build_model("fcn32s_alexnet", num_classes=3)
    for name, kind in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        config = TrainConfig(optimizer=name, lr=0.01).resolved()
        assert type(build_optimizer(model, config)) is kind


def test_amp_choices():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)


def test_bf16_autocast_and_accumulation_on_cpu(tmp_path):
    config = tiny(tmp_path, amp="bf16", accumulate=2, epochs=1, overlays=0)
    result = train(config)
    assert result.iterations == 2  # 8 images, 2 per micro-batch, 2 micro-batches per step
    assert math.isfinite(result.metrics["pixel_acc"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = SegmentationLoss.forward

    def failing(self, logits, target):
        calls["n"] += 1
        loss = forward(self, logits, target)
        return loss * math.nan if calls["n"] == 3 else loss

    monkeypatch.setattr(SegmentationLoss, "forward", failing)
    with pytest.raises(NonFiniteLossError, match="loss is nan after step 2") as error:
        train(tiny(tmp_path, checkpoint_every=1))
    assert "the last good checkpoint is" in str(error.value) and "\n" not in str(error.value)
    last = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.training["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in last.state_dict.values() if t.is_floating_point())
    records = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"event": "stopped"' in records


def test_a_callback_or_time_limit_stops_the_run_evaluated_and_saved(tmp_path):
    config = tiny(tmp_path, overlays=0)
    result = train(config, callbacks=[lambda info: info.iteration == 3])
    assert result.stopped == "callback" and result.iterations == 3
    assert math.isfinite(result.metrics["mean_iu"])
    saved = ckpt.load_checkpoint(result.last_checkpoint)
    assert saved.training["iteration"] == 3 and not saved.training["finished"]
    assert saved.metrics == result.metrics  # evaluated where it stopped
    resumed = train(config, resume=True)  # an early stop resumes to the end
    assert resumed.stopped == "finished" and resumed.iterations == 8
    result = train(tiny(tmp_path, name="limited", overlays=0, time_limit_minutes=1e-9))
    assert result.stopped == "time limit" and result.iterations == 1


def test_a_stop_asked_at_the_last_step_leaves_the_run_finished(tmp_path):
    """The time limit (here a callback) falling on the schedule's last step: the run is done,
    and says so (a staged run goes on to its next stage; a resume has nothing left)."""
    result = train(tiny(tmp_path, overlays=0), callbacks=[lambda info: info.iteration == 8])
    assert result.stopped == "finished" and result.iterations == 8
    assert ckpt.load_checkpoint(result.last_checkpoint).training["finished"]


def test_init_from_transplants_and_new_skips_start_at_zero(tmp_path):
    torch.manual_seed(0)
    coarse = build_model("fcn32s_efficientnet_lite0", num_classes=7)
    with torch.no_grad():
        coarse.head.score_fr.weight.normal_()
    source = record_of(coarse, classes=[str(i) for i in range(7)])
    ckpt.save_checkpoint(source, tmp_path / "32s.pt")
    config = tiny(tmp_path, model="fcn16s_efficientnet_lite0", init_from=str(tmp_path / "32s.pt"))
    spec = resolve_spec(config.model, num_classes=7)
    fine = build_model_for(config.resolved(), spec, init=True)
    assert torch.equal(fine.head.score_fr.weight, coarse.head.score_fr.weight)
    assert torch.equal(fine.backbone._conv_stem.weight, coarse.backbone._conv_stem.weight)
    assert not fine.head.score_pool4.weight.any() and not fine.head.score_pool4.bias.any()
    assert (fine.spec.upsample, fine.spec.learnable_upsample) == ("deconv", False)


class _Recorder(Hook):
    """Says which of the loop's named points it was called at, and stops after step 3."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_start(self, run, progress):
        self.calls.append("train start")

    def on_step_end(self, run, progress, info):
        self.calls.append(f"step {info.iteration}")
        return "callback" if info.iteration == 3 else None

    def on_validation_end(self, run, progress, metrics):
        self.calls.append(f"val {progress.position.iteration} {metrics['mean_iu'] >= 0}")

    def on_save(self, run, progress, record, *, resumable):
        self.calls.append("save last" if resumable else "save best")
        return record

    def on_train_end(self, run, progress):
        self.calls.append("train end")

    def on_end(self, run, progress, stopped):
        self.calls.append(f"end {stopped}")


def test_a_hook_is_called_at_the_named_points_and_can_stop_the_run(tmp_path):
    recorder = _Recorder()
    result = train(tiny(tmp_path, overlays=0), callbacks=[recorder])
    assert result.stopped == "callback" and result.iterations == 3
    assert recorder.calls == [
        "train start", "step 1", "step 2", "step 3",
        "val 3 True", "save best", "save last", "train end", "end callback",
    ]  # fmt: skip


def test_staged_paper_training_chains_the_stages(tmp_path):
    config = tiny(
        tmp_path, recipe="paper", staged=True, max_iters=1, overlays=0, val_options={"size": 32, "num_images": 1}
    )  # fmt: skip
    result = train(config)
    stages = ["stage1-32s", "stage2-16s", "stage3-8s"]
    assert result.run_dir == tmp_path / "run" / stages[-1]
    configs = [json.loads((tmp_path / "run" / s / "config.json").read_text()) for s in stages]
    assert [c["model"] for c in configs] == [
        "fcn32s_efficientnet_lite0",
        "fcn16s_efficientnet_lite0",
        "fcn8s_efficientnet_lite0",
    ]
    assert [c["lr"] for c in configs] == [1e-10, 1e-12, 1e-14]  # the reference's rates
    assert configs[0]["init_from"] is None
    assert configs[1]["init_from"] == str(tmp_path / "run" / stages[0] / "last.pt")
    assert configs[2]["init_from"] == str(tmp_path / "run" / stages[1] / "last.pt")
    assert all(c["momentum"] == 0.99 and c["loss_reduction"] == "sum" for c in configs)


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="cannot fill one step"):
        train(tiny(tmp_path, batch_size=4, accumulate=4))
    with pytest.raises(ValueError, match="num_classes = 5 but synthetic has 7 classes"):
        train(tiny(tmp_path, model_options={"num_classes": 5}))
    with pytest.raises(ckpt.CheckpointError, match="holds no last.pt"):
        train(tiny(tmp_path, name="never-started"), resume=True)


def test_the_configured_loss_is_the_criterion(tmp_path, monkeypatch):
    built = []

    class Recorded(SegmentationLoss):
        def __init__(self, **options):
            super().__init__(**options)
            built.append(self)

    monkeypatch.setattr(losses, "SegmentationLoss", Recorded)  # each task's, in MultiTaskLoss
    config = tiny(tmp_path, loss="focal", focal_gamma=1.5, class_weights=[1.0] * 7, max_iters=1)
    train(dataclasses.replace(config, epochs=1, overlays=0))
    (criterion,) = built
    assert (criterion.loss, criterion.focal_gamma, criterion.weight.tolist()) == ("focal", 1.5, [1.0] * 7)  # fmt: skip


def test_progress_bar_shows_loss_lr_and_speed_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    train(tiny(tmp_path, name="quiet", epochs=1, overlays=0))
    quiet = capsys.readouterr()
    assert "img_s" not in quiet.out + quiet.err  # not a terminal: no bars
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")  # a terminal with a width: pytest's stdout has none
    train(tiny(tmp_path, name="bars", epochs=1, overlays=0))
    shown = capsys.readouterr().out
    assert "loss=" in shown and "lr=" in shown and "img_s=" in shown and "epoch=1/1" in shown


def test_activation_checkpointing_trains_to_the_same_weights(tmp_path, monkeypatch):
    from fcnseg.models.backbones import base

    calls = []
    checkpoint = base.checkpoint
    monkeypatch.setattr(base, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    plain = train(tiny(tmp_path / "plain", epochs=1))
    assert not calls
    saved = train(tiny(tmp_path / "ckpt", epochs=1, activation_checkpointing=True))
    assert calls  # the blocks did run checkpointed
    ours = ckpt.load_checkpoint(saved.last_checkpoint).state_dict
    for key, value in ckpt.load_checkpoint(plain.last_checkpoint).state_dict.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_model_spec_applies_num_classes_or_refuses_it_never_ignores_it():
    """Issue 12: a num_classes set for a multi-task model was silently ignored."""
    siftflow = SimpleNamespace(
        classes={"semantic": tuple(f"s{i}" for i in range(33)), "geometric": ("sky", "h", "v")}
    )
    two = TrainConfig(model="fcn16s_vgg16_siftflow", dataset="siftflow")
    assert model_spec(two, siftflow).task_classes == {"semantic": 33, "geometric": 3}
    with pytest.raises(ConfigError, match="not num_classes"):
        model_spec(dataclasses.replace(two, model_options={"num_classes": 33}), siftflow)
    plain = TrainConfig(model="fcn32s_vgg16", dataset="siftflow")  # open: the data's label sets
    assert model_spec(plain, siftflow).task_classes == {"semantic": 33, "geometric": 3}
    one = dataclasses.replace(plain, model_options={"num_classes": 33})  # applied: one head
    assert model_spec(one, siftflow).task_classes == {"semantic": 33}
    with pytest.raises(ConfigError, match="num_classes = 3 but siftflow has 33 classes"):
        model_spec(dataclasses.replace(plain, model_options={"num_classes": 3}), siftflow)
    tasks = dataclasses.replace(plain, model_options={"tasks": {"semantic": 33, "depth": 10}})
    with pytest.raises(ConfigError, match="has no label set 'depth'"):
        model_spec(tasks, siftflow)


def test_channels_last_trains_as_the_plain_layout(tmp_path):
    """The NHWC layout changes the kernels' summation order only: after 4 SGD steps the
    losses agree to 1e-4 relative, the weights to 1e-4 absolute and the batch-norm running
    variances (sums of squares over 1 x 1 maps of 32 x 32 inputs) to 2e-3 relative. (Adam
    would magnify the rounding: it divides near-zero gradients by their own size.)"""
    runs = {}
    for layout in (False, True):
        config = tiny(
            tmp_path, name=f"nhwc-{layout}", channels_last=layout, max_iters=4, overlays=0
        )
        config = dataclasses.replace(config, optimizer="sgd", lr=1e-3, warmup_iters=0)
        result = train(config)
        records = (result.run_dir / "log.jsonl").read_text().splitlines()
        losses = [json.loads(r)["loss"] for r in records if '"train"' in r]
        runs[layout] = losses, ckpt.load_checkpoint(result.last_checkpoint).state_dict
    (plain_losses, plain), (nhwc_losses, nhwc) = runs[False], runs[True]
    assert nhwc_losses == pytest.approx(plain_losses, rel=1e-4)
    assert plain.keys() == nhwc.keys()
    for key, value in plain.items():
        if value.is_floating_point():
            rtol, atol = (2e-3, 1e-6) if "running_var" in key else (0.0, 1e-4)
            torch.testing.assert_close(nhwc[key], value, rtol=rtol, atol=atol, msg=key)


def test_a_step_reads_its_losses_once_and_runs_one_collective(tmp_path, monkeypatch):
    """Two micro-batches a step, as rank 0 of two: the losses add up on the device, the
    host reads them once and the ranks agree on them in one all-reduce; the logged loss is
    the mean of the micro-batches' losses, as when each was read on its own."""
    reads, reduces, losses_seen, logged = [], [], [], []
    forward = SegmentationLoss.forward

    def recorded(self, logits, target):
        loss = forward(self, logits, target)
        losses_seen.append(loss.detach().clone())
        return loss

    def counted(name, method):
        def read(self, *args, **kwargs):
            if stepping:
                reads[-1] += 1
            return method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    train_step, stepping = loop.train_step, []

    def as_rank_zero_of_two(run, position, micro, laps=None):
        reads.append(0)
        pair = dataclasses.replace(run, context=distributed.Context(world_size=2))
        stepping.append(True)
        try:
            return train_step(pair, position, micro, laps)
        finally:
            stepping.clear()

    monkeypatch.setattr(SegmentationLoss, "forward", recorded)
    monkeypatch.setattr(loop, "train_step", as_rank_zero_of_two)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: reduces.append(t))
    counted("item", torch.Tensor.item)
    counted("tolist", torch.Tensor.tolist)
    config = tiny(tmp_path, accumulate=2, epochs=1, overlays=0, eval_every=10)
    train(config, callbacks=[lambda info: logged.append(info.loss) or False])
    steps = len(logged)
    assert steps == 2 and reads == [1] * steps
    step_reductions = [t for t in reduces if t.dtype == torch.float64]
    assert len(step_reductions) == steps
    expected = [
        (a.item() + b.item()) / 2 for a, b in zip(losses_seen[::2], losses_seen[1::2], strict=True)
    ]
    assert logged == expected
