"""The run log for other tools: train.csv / val.csv and TensorBoard event files beside
log.jsonl, truncated on resume as log.jsonl is."""

import csv
import importlib.util
import sys

import pytest
import torch
from test_engine_train import tiny

from fcnseg.training.runfolder import RunLog, flatten_record
from fcnseg.training.stages import train

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(
    not HAS_TENSORBOARD, reason="the tensorboard package is not installed (the [tensorboard] extra)"
)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(path):
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _scalars(folder):
    """{tag: [(step, value), ...]} of the event files in ``folder``, as TensorBoard sees them
    (with the steps a resumed run's writer purged left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _val(iteration, iu):
    return {
        "event": "val",
        "epoch": 0,
        "iteration": iteration,
        "pixel_acc": 0.5,
        "mean_acc": 0.5,
        "mean_iu": float("nan"),  # no class present: NaN, written as null / an empty cell
        "fw_iu": 0.25,
        "iu": iu,
        "acc": [1.0, 0.0],
    }


def test_flatten_names_per_class_columns_and_spreads_tasks():
    record = _val(3, [0.25, 0.75])
    row = flatten_record(record, ["Sky", "Building"])
    assert list(row)[:2] == ["epoch", "iteration"] and "event" not in row
    assert row["iu/Sky"] == 0.25 and row["acc/Building"] == 0.0
    assert flatten_record(record)["iu/1"] == 0.75  # no names: numbered
    assert "iu/0" in flatten_record(record, ["just one name"])  # names that do not fit
    tasks = {"iteration": 2, "mean_iu": 0.3, "semantic": {"iu": [0.1, 0.2]}, "geometric": {"iu": [0.4]}}  # fmt: skip
    names = {"semantic": ["sky", "tree"], "geometric": ["vertical"]}
    row = flatten_record(tasks, names)
    assert row == {"iteration": 2, "mean_iu": 0.3, "semantic/iu/sky": 0.1, "semantic/iu/tree": 0.2, "geometric/iu/vertical": 0.4}  # fmt: skip


def test_csv_rows_with_the_header_once_and_truncated_on_resume(tmp_path):
    log = RunLog(tmp_path / "log.jsonl", enabled=True, classes=["Sky", "Building"])
    log.write({"event": "start", "iteration": 0})  # events other than train/val: JSON only
    for iteration in (1, 2, 3, 4):
        log.write({"event": "train", "epoch": 0, "iteration": iteration, "loss": 1.0 / iteration, "lr": 0.1})  # fmt: skip
    log.write(_val(2, [0.25, 0.75]))
    log.write(_val(4, [0.5, 0.5]))
    log.close()
    train_rows = _rows(tmp_path / "train.csv")
    assert [r["iteration"] for r in train_rows] == ["1", "2", "3", "4"]
    assert float(train_rows[3]["loss"]) == 0.25 and list(train_rows[0]) == ["epoch", "iteration", "loss", "lr"]  # fmt: skip
    lines = (tmp_path / "val.csv").read_text().splitlines()
    assert lines[0] == "epoch,iteration,pixel_acc,mean_acc,mean_iu,fw_iu,iu/Sky,iu/Building,acc/Sky,acc/Building"  # fmt: skip
    assert lines[1] == "0,2,0.5,0.5,,0.25,0.25,0.75,1.0,0.0" and len(lines) == 3

    # a run resumed from its iteration-2 checkpoint: it logs 3 and 4 again
    resumed = RunLog(tmp_path / "log.jsonl", enabled=True, classes=["Sky", "Building"])
    resumed.truncate_after(2)
    assert [r["iteration"] for r in _rows(tmp_path / "train.csv")] == ["1", "2"]
    assert [r["iteration"] for r in _rows(tmp_path / "val.csv")] == ["2"]
    resumed.write({"event": "train", "epoch": 0, "iteration": 3, "loss": 9.0, "lr": 0.1})
    resumed.close()
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0] == "epoch,iteration,loss,lr" and lines.count(lines[0]) == 1  # header once
    assert lines[-1] == "0,3,9.0,0.1" and len(lines) == 4
    events = [r["event"] for r in resumed.records()]
    assert events == ["start", "train", "train", "val", "train"]


def test_without_tensorboard_nothing_breaks_and_nothing_is_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    log = RunLog(tmp_path / "log.jsonl", enabled=True)
    for iteration in (1, 2, 3):
        log.write({"event": "train", "epoch": 0, "iteration": iteration, "loss": 1.0, "lr": 0.1})
    log.close()
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "tb").exists() and len(_rows(tmp_path / "train.csv")) == 3


def test_a_disabled_log_writes_nothing(tmp_path):
    log = RunLog(tmp_path / "log.jsonl", enabled=False)  # a rank other than 0
    log.write({"event": "train", "epoch": 0, "iteration": 1, "loss": 1.0, "lr": 0.1})
    log.truncate_after(0)
    assert list(tmp_path.iterdir()) == []


@needs_tensorboard
def test_tensorboard_purges_the_steps_a_resumed_run_repeats(tmp_path):
    log = RunLog(tmp_path / "log.jsonl", enabled=True)
    for iteration in (1, 2, 3):
        log.write({"event": "train", "epoch": 0, "iteration": iteration, "loss": 99.0, "lr": 0.1})  # fmt: skip
    log.close()
    resumed = RunLog(tmp_path / "log.jsonl", enabled=True)
    resumed.truncate_after(1)
    for iteration in (2, 3):
        resumed.write({"event": "train", "epoch": 0, "iteration": iteration, "loss": 1.0, "lr": 0.1})  # fmt: skip
    resumed.close()
    assert _scalars(tmp_path / "tb")["train/loss"] == [(1, 99.0), (2, 1.0), (3, 1.0)]


def test_a_training_run_writes_csv_and_tensorboard(tmp_path):
    result = train(tiny(tmp_path, overlays=0))  # 2 epochs of 4 steps, logged every step
    run = result.run_dir
    train_rows = _rows(run / "train.csv")
    assert [int(r["iteration"]) for r in train_rows] == list(range(1, 9))
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in train_rows)
    records = [
        r for r in RunLog(run / "log.jsonl", enabled=False).records() if r["event"] == "train"
    ]
    assert [float(r["loss"]) for r in train_rows] == pytest.approx([r["loss"] for r in records])
    val_rows = _rows(run / "val.csv")
    assert [int(r["iteration"]) for r in val_rows] == [4, 8]
    assert {"mean_iu", "iu/background", "iu/spot", "acc/disc"} <= set(val_rows[0])
    if not HAS_TENSORBOARD:
        pytest.skip("the tensorboard package is not installed: CSV checked, event files not")
    assert list((run / "tb").glob("events.out.tfevents.*"))
    scalars = _scalars(run / "tb")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 9))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in records])
    assert [step for step, _ in scalars["val/mean_iu"]] == [4, 8]
    assert scalars["val/mean_iu"][-1][1] == pytest.approx(float(val_rows[-1]["mean_iu"]))
    assert "val/iu/pole" in scalars and "train/lr" in scalars
