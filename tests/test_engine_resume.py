"""A run killed with SIGKILL mid-epoch and resumed ends with the weights of an unbroken run.

Both runs are ``fcnseg train`` processes on CPU. The config draws from every random source a
step has (augmentation, loss sampling, EfficientNet's drop-connect) and writes a checkpoint
after every step, so the kill can land anywhere, including in the middle of a write.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fcnseg.training.checkpoint import load_checkpoint

STEPS = 8  # 2 epochs of 4 steps


def _config(tmp_path):
    config = {
        "model": "fcn8s_efficientnet_lite0",
        "train_options": {"size": 32, "num_images": 8},
        "val_options": {"size": 32, "num_images": 2},
        "epochs": 2,
        "batch_size": 2,
        "optimizer": "sgd",
        "warmup_iters": 3,
        "crop_size": 32,
        "scale_range": [0.75, 1.25],
        "flip": True,
        "jitter": True,
        "loss_sampling": 0.3,
        "sampling_cell": 8,
        "checkpoint_every": 1,
        "log_every": 1,
        "num_workers": 0,
        "threads": 1,
        "deterministic": True,
        "overlays": 0,
        "seed": 5,
    }
    path = tmp_path / "resume.json"
    path.write_text(json.dumps(config))
    return path


def _train(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fcnseg.cli", "train", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _logged_iteration(log):
    if not log.is_file():
        return 0
    iterations = [0]
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "train":
            iterations.append(record["iteration"])
    return max(iterations)


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    config = _config(tmp_path)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    reference = _train("--config", config, "--run-dir", whole)  # runs alongside
    victim = _train("--config", config, "--run-dir", broken)
    deadline = time.monotonic() + 120
    while _logged_iteration(broken / "log.jsonl") < 6:  # checkpoint 5 is written: mid-epoch 2
        assert victim.poll() is None, victim.stdout.read().decode()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(broken / "last.pt").training
    if killed_at["finished"]:
        pytest.fail("the run finished before the kill landed: nothing was tested")
    assert killed_at["epoch"] == 1 and 1 <= killed_at["step_in_epoch"] < 4  # mid-epoch

    resumed = _train("--resume", broken)
    output = resumed.communicate(timeout=180)[0].decode()
    assert resumed.returncode == 0, output
    assert f"resuming at step {killed_at['iteration']}" in output
    assert reference.wait(timeout=180) == 0, reference.stdout.read().decode()

    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(broken / "last.pt")
    assert a.training["iteration"] == b.training["iteration"] == STEPS
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), f"{key} differs after resuming"
    momentum_a = a.training["optimizer"]["state"]
    momentum_b = b.training["optimizer"]["state"]
    assert all(torch.equal(momentum_a[k]["momentum_buffer"], momentum_b[k]["momentum_buffer"]) for k in momentum_a)  # fmt: skip
    assert a.metrics["mean_iu"] == b.metrics["mean_iu"]

    def losses(run):
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [(r["iteration"], r["loss"]) for r in records if r["event"] == "train"]

    assert losses(broken) == losses(whole)  # every step logged once, with the same loss
