"""DDP through torchrun on CPU (gloo): 2 processes give the metrics of 1.

Two ranks train a few steps and evaluate the validation set, each its shard, the confusion
matrices summed across ranks. One process then evaluates the saved weights alone; the two
matrices must be equal to the pixel (an odd number of images: no image counted twice).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from fcnseg.data import SyntheticShapes, eval_transforms
from fcnseg.engine.checkpoint import load_checkpoint
from fcnseg.engine.distributed import Context, ShardSampler
from fcnseg.engine.evaluate import eval_loader, evaluate
from fcnseg.metrics import metrics_from_matrix


def test_shards_cover_every_item_once():
    shards = [list(ShardSampler(5, rank, 2)) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]] and len(ShardSampler(5, 1, 2)) == 2


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
