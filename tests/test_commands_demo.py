"""``fcnseg demo`` end to end, seconds long: FCN-32s vs FCN-8s and a report folder."""

import argparse
import json

import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.cli import main
from fcnseg.commands import demo
from fcnseg.training.threads import AdaptiveThreads


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_demo_writes_a_report_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--steps", "2", "--size", "32", "--batch-size", "2", "--val-images", "2"]
    assert main([*args, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    (folder,) = (tmp_path / "runs").glob("demo-*")
    assert f"report: {folder.relative_to(tmp_path) / 'report.md'}" in out
    report = (folder / "report.md").read_text()
    assert "| FCN-32s |" in report and "| FCN-8s |" in report and "mean IU" in report
    assert "ImageNet EfficientNet-Lite0" in report  # the weights package is installed
    for name in ("curves.png", "confusion.png", "overlays/000.png"):
        assert Image.open(folder / name).size[0] > 0
    panel = Image.open(folder / "overlays" / "000.png")
    # image | label | FCN-32s | FCN-8s, 32 px images in 160 px tiles, titled, a legend below
    assert panel.size[0] == 8 + 4 * 160 + 3 * 8 + 8 and panel.size[1] > 8 + 24 + 160 + 8
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary) >= {"32s", "8s", "steps", "seconds"}
    assert summary["32s"]["mean_iu"] is not None and summary["8s"]["mean_iu"] is not None
    for variant in ("fcn32s", "fcn8s"):
        assert (folder / variant / "best.pt").is_file()


def test_demo_rejects_bad_sizes(capsys):
    assert main(["demo", "--size", "16"]) == 2
    assert "--size must be at least 32" in capsys.readouterr().err
    assert main(["demo", "--minutes", "0"]) == 2


@pytest.mark.slow
def test_summary_steps_are_the_steps_the_report_shows(tmp_path, monkeypatch, capsys):
    """A net cut short (its time limit) trains fewer steps than planned: summary.json and
    report.md both give the steps trained, and the report and the console say why they
    fall short."""
    import dataclasses

    from fcnseg.commands import demo

    real_train = demo.train

    def time_limited_32s(config, run_dir, *, callbacks):
        if run_dir.name != "fcn32s":
            return real_train(config, run_dir, callbacks=callbacks)
        result = real_train(config, run_dir, callbacks=[*callbacks, lambda i: i.iteration >= 2])
        return dataclasses.replace(result, stopped="time limit")

    monkeypatch.setattr(demo, "train", time_limited_32s)
    out = tmp_path / "demo"
    args = ["demo", "--steps", "3", "--size", "32", "--batch-size", "2", "--val-images", "2"]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == {"32s": 2, "8s": 2} and summary["planned_steps"] == 3
    report = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if "| FCN-" in line}
    for variant in ("32s", "8s"):
        trained = int(rows[f"FCN-{variant}"].rstrip(" |").rsplit("|", 1)[1])
        assert trained == summary["steps"][variant]
    assert "Planned 3 steps per net; trained: FCN-32s 2 (the time limit of --minutes), " \
        "FCN-8s 2 (capped at FCN-32s's count, for a fair comparison)." in report
    printed = capsys.readouterr().out.splitlines()
    assert "FCN-32s stopped at 2 of 3 planned steps: the time limit of --minutes" in printed
    assert "FCN-8s stopped at 2 of 3 planned steps: capped at FCN-32s's count, for a fair " \
        "comparison" in printed


def test_on_a_gpu_the_demo_times_and_trains_there_and_leaves_cpu_threads_alone(
    tmp_path, monkeypatch
):
    """The plan's step time comes from the device that trains (the meta device stands in
    for the GPU), and no thread count is set or probed for a GPU run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo._device() == torch.device("cuda")
    args = argparse.Namespace(threads=0, batch_size=2, size=32, val_images=2)
    assert demo._callbacks(args, torch.device("cuda")) == []
    assert isinstance(demo._callbacks(args, torch.device("cpu"))[0], AdaptiveThreads)
    built, threads_set = [], []
    monkeypatch.setattr(
        demo, "build_model", lambda *a, **k: built.append(nn.Conv2d(3, 7, 1)) or built[-1]
    )
    monkeypatch.setattr(torch, "set_num_threads", threads_set.append)
    meta = torch.device("meta")
    threads, _ = demo._measure(args, meta)
    assert threads == 0 and threads_set == []
    assert next(built[0].parameters()).device == meta
    plan = demo._Plan(10, 0.1, threads, False, torch.device("cuda"))
    config = demo._config(args, plan, "8s", tmp_path, limit_seconds=60)
    assert config.device == "cuda" and config.threads == 0
