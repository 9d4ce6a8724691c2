"""Training and evaluation throughput of the engine on CPU (or CUDA), synthetic data.

Runs ``fcnseg.training.stages`` for a fixed number of steps and reads images/s from its log,
then times whole-image evaluation, for each thread count asked: as the library trained
before issue 16 (the plain contiguous NCHW layout and PyTorch's ``nn.ReLU6(inplace=True)``)
and with today's defaults (channels-last, fcnseg's ReLU6, which keeps no copy of its
input), alternating ``--repeats`` times, so the speed-up is measured in the same run and a
neighbour's load on a shared machine falls on both. On a machine shared with other
processes, compare thread counts: OpenMP threads that wait for each other can make more
threads much slower than one (see ``fcnseg.training.threads``).

    python benchmarks/train_throughput.py                       # the demo's setting
    python benchmarks/train_throughput.py --size 352 --batch-size 8 --threads 1 2
    python benchmarks/train_throughput.py --model fcn8s_resnet18 --size 256 --threads 1 2

benchmarks/train_step.py splits a step into data, forward, backward and optimizer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from fcnseg.config import TrainConfig
from fcnseg.data import SyntheticShapes, eval_transforms
from fcnseg.inference import Segmenter
from fcnseg.models.backbones import efficientnet
from fcnseg.training.distributed import Context
from fcnseg.training.evaluate import eval_loader, evaluate
from fcnseg.training.stages import train

SETUPS = ("before", "today")
_LABELS = {"before": "before (NCHW, nn.ReLU6)", "today": "today's defaults"}


def _layers(setup: str):
    """Within it, models build as they did in ``setup``."""
    if setup == "today":
        return contextlib.nullcontext()
    return mock.patch.object(efficientnet, "ReLU6", lambda: torch.nn.ReLU6(inplace=True))


def _train_rate(
    args: argparse.Namespace, threads: int, folder: Path, setup: str, repeat: int
) -> tuple[float, Path]:
    channels_last = setup == "today"
    config = TrainConfig(
        model=args.model,
        dataset="synthetic",
        train_options={"size": args.size, "num_images": args.steps * args.batch_size},
        val_options={"size": args.size, "num_images": 2},
        optimizer="adamw",
        max_iters=args.steps,
        batch_size=args.batch_size,
        scale_range=None,
        jitter=False,
        amp=args.amp,
        num_workers=0,
        threads=threads,
        channels_last=channels_last,
        log_every=1,
        overlays=0,
        device=args.device,
        output=str(folder),
        name=f"threads{threads}-{setup}-{repeat}",
    )
    with _layers(setup):
        result = train(config)
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r["event"] == "train"][2:]  # after warm-up
    return statistics.median(rates), result.last_checkpoint


def _eval_ms(args: argparse.Namespace, checkpoint: Path, threads: int) -> float:
    torch.set_num_threads(threads)
    segmenter = Segmenter.from_checkpoint(checkpoint, device=args.device)
    dataset = SyntheticShapes(
        "val", eval_transforms(segmenter.normalization), size=args.size, num_images=args.images
    )
    loader = eval_loader(dataset, Context(device=torch.device(args.device)))
    begin = time.perf_counter()
    evaluate(segmenter.model, loader, device=args.device)
    return 1000 * (time.perf_counter() - begin) / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcn8s_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--images", type=int, default=20, help="images to evaluate")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16", "auto"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setup, alternated")
    args = parser.parse_args()
    print(
        f"{args.model}, {args.batch_size} x {args.size}^2 per step, {args.device}, amp {args.amp}"
    )
    print("threads  setup                   train images/s  ratio  eval ms/image")
    with tempfile.TemporaryDirectory() as folder:
        for threads in sorted(set(args.threads)):
            rates: dict[str, list[float]] = {setup: [] for setup in SETUPS}
            checkpoints: dict[str, Path] = {}
            for repeat in range(args.repeats):
                for setup in SETUPS:
                    rate, checkpoints[setup] = _train_rate(
                        args, threads, Path(folder), setup, repeat
                    )
                    rates[setup].append(rate)
            baseline = statistics.median(rates["before"])
            for setup in SETUPS:
                rate = statistics.median(rates[setup])
                with _layers(setup):
                    eval_ms = _eval_ms(args, checkpoints[setup], threads)
                print(
                    f"{threads:7d}  {_LABELS[setup]:22s}  {rate:14.2f}  {rate / baseline:4.2f}x  "
                    f"{eval_ms:13.1f}"
                )


if __name__ == "__main__":
    main()
