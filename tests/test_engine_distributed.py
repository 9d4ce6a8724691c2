"""DDP through torchrun on CPU (gloo): 2 processes give the metrics of 1.

Two ranks train a few steps and evaluate the validation set, each its shard, the confusion
matrices summed across ranks. One process then evaluates the saved weights alone; the two
matrices must be equal to the pixel (an odd number of images: no image counted twice).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from fcnseg.data import SyntheticShapes, eval_transforms
from fcnseg.metrics import metrics_from_matrix
from fcnseg.training.checkpoint import load_checkpoint
from fcnseg.training.distributed import Context, ShardSampler, gather_values
from fcnseg.training.evaluate import eval_loader, evaluate


def test_shards_cover_every_item_once():
    shards = [list(ShardSampler(5, rank, 2)) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]] and len(ShardSampler(5, 1, 2)) == 2


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.subprocess
def test_two_gloo_processes_give_the_metrics_of_one(tmp_path, one_thread):
    config = {
        "model": "fcn8s_efficientnet_lite0",
        "train_options": {"size": 32, "num_images": 8},
        "val_options": {"size": 32, "num_images": 5},
        "epochs": 1,
        "batch_size": 2,
        "scale_range": None,
        "jitter": False,
        "num_workers": 0,
        "threads": 1,
        "log_every": 1,
        "overlays": 1,
        "device": "cpu",
    }
    (tmp_path / "ddp.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "fcnseg.cli", "train", "--config", str(tmp_path / "ddp.json"), "--run-dir", str(run),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("run folder") == 2  # rank 0 alone prints: the start and the end

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("start") == 1 and records[0]["world_size"] == 2
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["iteration"] for r in train_records] == [1, 2]  # 8 images / (2 ranks x 2)
    assert train_records[0]["images_per_s"] > 0

    checkpoint = load_checkpoint(run / "last.pt")
    assert len(checkpoint.training["rng"]) == 2  # each rank's generators, for resuming
    model = checkpoint.build()
    val = SyntheticShapes("val", eval_transforms(model.normalization), size=32, num_images=5)
    single = evaluate(model, eval_loader(val, Context()))["semantic"]
    assert single.matrix.sum() == 5 * 32 * 32
    assert torch.equal(checkpoint.confusion["semantic"], single.matrix)
    summary = json.loads((run / "metrics.json").read_text())
    expected = metrics_from_matrix(single.matrix)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert summary["last"][key] == pytest.approx(expected[key], abs=0, rel=1e-12), key


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_start(log, rank0, deadline):
    while time.monotonic() < deadline and rank0.poll() is None:
        if log.is_file() and '"start"' in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError("rank 0 did not start training")


@pytest.mark.slow
@pytest.mark.ddp
def test_a_frozen_rank_ends_the_other_in_one_line_after_ddp_timeout_seconds(
    tmp_path, cli_environment
):
    """SIGSTOP on one rank left the other waiting for torch's 30-minute default (issue 13):
    with ddp_timeout_seconds = 5 rank 0 stops after about 5 s and names the silent rank."""
    config = {
        "model": "fcn32s_efficientnet_lite0",
        "train_options": {"size": 32, "num_images": 4},
        "val_options": {"size": 32, "num_images": 1},
        "epochs": 1000,  # still training when rank 1 is stopped
        "batch_size": 1,
        "scale_range": None,
        "jitter": False,
        "num_workers": 0,
        "threads": 1,
        "overlays": 0,
        "device": "cpu",
        "ddp_timeout_seconds": 5,
    }
    (tmp_path / "ddp.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fcnseg", "train", "--config", str(tmp_path / "ddp.json")]
    command += ["--run-dir", str(run)]
    base = {**cli_environment, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    ranks = []
    for rank in range(2):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    try:
        _wait_for_start(run / "log.jsonl", ranks[0], time.monotonic() + 240)
        ranks[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        for process in ranks:
            process.kill()
            process.communicate()
    assert ranks[0].returncode == 1, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("fcnseg: error: rank 0 of 2 ")
    assert "rank 1 " in stderr and "5 s" in stderr and "ddp_timeout_seconds" in stderr
    assert waited < 60  # about the 5 s timeout, not torch's 30 minutes


@pytest.mark.slow
@pytest.mark.ddp
def test_a_rank_that_never_joins_is_named_after_ddp_timeout_seconds(tmp_path, fcnseg_cli):
    """Rank 0 started alone: it stops waiting for rank 1 after the timeout, in one line."""
    config = {"train_options": {"size": 32, "num_images": 2}, "device": "cpu"}
    (tmp_path / "alone.json").write_text(json.dumps({**config, "ddp_timeout_seconds": 3}))
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(_free_port())
    started = time.monotonic()
    result = fcnseg_cli("train", "--config", tmp_path / "alone.json", env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "fcnseg: error: rank 0 of 2 timed out after 3 s waiting for rank 1 to join the process "
        "group: rank 1 stopped answering (frozen, stopped, crashed or far slower); check that "
        "process, or raise ddp_timeout_seconds (now 3) if it is only slow"
    ]
    assert time.monotonic() - started < 60


def _gather_on_rank(rank: int, store_path: str, out: str) -> None:
    store = torch.distributed.FileStore(store_path, 2)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        loss = torch.tensor(float("nan") if rank == 1 else 0.25, dtype=torch.float64)
        values = gather_values(loss, Context(rank=rank, world_size=2))
        with open(f"{out}.{rank}", "w") as handle:
            json.dump([repr(value) for value in values], handle)
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_sees_every_rank_loss_in_one_collective(tmp_path):
    """A loss that is NaN on rank 1 alone reaches rank 0 in the step's one all-reduce, so
    both ranks stop at the same step."""
    out = str(tmp_path / "values")
    torch.multiprocessing.spawn(_gather_on_rank, args=(str(tmp_path / "store"), out), nprocs=2)
    for rank in range(2):
        assert json.loads((tmp_path / f"values.{rank}").read_text()) == ["0.25", "nan"]
