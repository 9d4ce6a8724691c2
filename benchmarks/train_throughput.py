"""Training and evaluation throughput of the engine on CPU (or CUDA), synthetic data.

Runs ``fcnseg.engine.train`` for a fixed number of steps and reads images/s from its log,
then times whole-image evaluation, for each thread count asked: once with the plain
(contiguous NCHW) layout, the library's default before 0.3, and once with today's defaults
(channels-last), so the speed-up is measured in the same run. On a machine shared with
other processes, compare thread counts: OpenMP threads that wait for each other can make more
threads much slower than one (see ``fcnseg.engine.threads``).

    python benchmarks/train_throughput.py                       # the demo's setting
    python benchmarks/train_throughput.py --size 352 --batch-size 8 --threads 1 2
    python benchmarks/train_throughput.py --model fcn8s_resnet18 --size 256 --threads 1 2

benchmarks/train_step.py splits a step into data, forward, backward and optimizer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.config import TrainConfig
from fcnseg.data import SyntheticShapes, eval_transforms
from fcnseg.engine.distributed import Context
from fcnseg.engine.evaluate import eval_loader, evaluate
from fcnseg.engine.train import train
from fcnseg.inference import Segmenter


def _train_rate(
    args: argparse.Namespace, threads: int, folder: Path, channels_last: bool
) -> tuple[float, Path]:
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
        name=f"threads{threads}-{'nhwc' if channels_last else 'nchw'}",
    )
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
    args = parser.parse_args()
    print(
        f"{args.model}, {args.batch_size} x {args.size}^2 per step, {args.device}, amp {args.amp}"
    )
    print("threads  layout          train images/s  ratio  eval ms/image")
    with tempfile.TemporaryDirectory() as folder:
        for threads in sorted(set(args.threads)):
            baseline = None
            for channels_last in (False, True):
                rate, checkpoint = _train_rate(args, threads, Path(folder), channels_last)
                baseline = baseline or rate
                layout = "channels-last" if channels_last else "plain (NCHW)"
                print(
                    f"{threads:7d}  {layout:14s}  {rate:14.2f}  {rate / baseline:4.2f}x  "
                    f"{_eval_ms(args, checkpoint, threads):13.1f}"
                )


if __name__ == "__main__":
    main()
