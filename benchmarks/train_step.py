"""Where a CPU training step's time goes: data, forward, backward, optimizer, per option.

Times each component of a training step on CamVid crops, for the plain path and for each
speed option (channels-last memory format, bf16 autocast, the fused AdamW kernel), in one
run, so the ratios compare like with like on whatever else the machine is doing.

    python benchmarks/train_step.py                                # Lite0, 352 crops, batch 8
    python benchmarks/train_step.py --model fcn8s_resnet18 --threads 1 2

Reads ../shared/data/camvid unless --root says otherwise; --synthetic uses random images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import fcnseg
from fcnseg.config import TrainConfig
from fcnseg.data import CamVid, pad_collate, train_transforms
from fcnseg.engine.optim import build_optimizer
from fcnseg.losses import SegmentationLoss

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"
OPTIONS = {
    "plain": dict(channels_last=False, amp=None, fused=False),
    "channels-last": dict(channels_last=True, amp=None, fused=False),
    "fused adamw": dict(channels_last=False, amp=None, fused=True),
    "bf16": dict(channels_last=False, amp=torch.bfloat16, fused=False),
    "bf16 channels-last": dict(channels_last=True, amp=torch.bfloat16, fused=False),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--synthetic", action="store_true", help="random images, no dataset")
    parser.add_argument("--model", default="fcn8s_efficientnet_lite0")
    parser.add_argument("--crop", type=int, default=352)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per option")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    return parser.parse_args()


def batches(args: argparse.Namespace, model: torch.nn.Module, count: int):
    """``count`` training batches, and the median seconds one took to load and augment."""
    if args.synthetic:
        image = torch.randn(args.batch_size, 3, args.crop, args.crop)
        label = torch.randint(0, 11, (args.batch_size, args.crop, args.crop))
        return [(image, label)] * count, 0.0
    transforms = train_transforms(model, crop_size=args.crop, scale=(0.5, 1.5), seed=0)
    dataset = CamVid(args.root, "train", transforms=transforms)
    loaded, seconds = [], []
    for step in range(count):
        began = time.perf_counter()
        indices = range(step * args.batch_size, (step + 1) * args.batch_size)
        loaded.append(pad_collate([dataset[i % len(dataset)] for i in indices]))
        seconds.append(time.perf_counter() - began)
    return loaded, statistics.median(seconds)


def time_steps(args, option: dict, data: list) -> dict[str, float]:
    """Median seconds of forward (with the loss), backward and the optimizer step."""
    torch.manual_seed(0)
    model = fcnseg.build_model(args.model, num_classes=11).train()
    memory = torch.channels_last if option["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory)
    config = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4).resolved()
    optimizer = build_optimizer(model, config)
    if option["fused"]:
        optimizer = torch.optim.AdamW(optimizer.param_groups, lr=1e-3, fused=True)
    criterion = SegmentationLoss(reduction="mean")
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for step, (image, label) in enumerate(data):
        image = image.contiguous(memory_format=memory)
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=option["amp"] or torch.bfloat16, enabled=bool(option["amp"])):
            loss = criterion(model(image), label)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step >= 1:  # the first step allocates and picks kernels
            for name, begin, end in zip(parts, marks, marks[1:], strict=False):
                parts[name].append(end - begin)
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> None:
    args = parse_args()
    probe = fcnseg.build_model(args.model, num_classes=11)
    data, load_s = batches(args, probe, args.steps + 1)
    print(
        f"{args.model}, batch {args.batch_size} x {args.crop}^2 crops, "
        f"{'synthetic' if args.synthetic else 'CamVid train'}; medians of {args.steps} steps"
    )
    print(f"data (decode, augment, collate; main process): {load_s:.3f} s per batch")
    header = "threads  option               forward  backward  optimizer  step s  img/s  ratio"
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{header}")
        baseline = None
        for name in args.options:
            parts = time_steps(args, OPTIONS[name], data)
            step = sum(parts.values()) + load_s
            baseline = baseline or step
            print(
                f"{threads:7d}  {name:19s} {parts['forward']:8.3f} {parts['backward']:9.3f} "
                f"{parts['optimizer']:10.3f} {step:7.3f} {args.batch_size / step:6.1f} "
                f"{baseline / step:6.2f}x"
            )


if __name__ == "__main__":
    main()
