"""Where a CPU training step's time goes: data, forward, backward, optimizer, per option.

Times each component of a training step on CamVid crops, for the plain path and for each
speed option (channels-last memory format, fcnseg's ReLU6, bf16 autocast, the fused AdamW
kernel), in one run, the options taking turns step by step, so the ratios compare like with
like on whatever else the machine is doing.

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
from fcnseg.losses import SegmentationLoss
from fcnseg.models.activation import ReLU6
from fcnseg.training.optim import build_optimizer

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"
# "torch relu6": PyTorch's nn.ReLU6(inplace=True) in place of fcnseg's (models/activation.py),
# the layer every row used before fcnseg had its own; "plain" is the step as it was then.
OPTIONS = {
    "plain": dict(channels_last=False, amp=None, fused=False, torch_relu6=True),
    "channels-last": dict(channels_last=True, amp=None, fused=False, torch_relu6=True),
    "fcnseg relu6": dict(channels_last=False, amp=None, fused=False, torch_relu6=False),
    "cl + fcnseg relu6": dict(channels_last=True, amp=None, fused=False, torch_relu6=False),
    "fused adamw": dict(channels_last=False, amp=None, fused=True, torch_relu6=True),
    "bf16": dict(channels_last=False, amp=torch.bfloat16, fused=False, torch_relu6=True),
    "bf16 channels-last": dict(
        channels_last=True, amp=torch.bfloat16, fused=False, torch_relu6=True
    ),
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


def use_torch_relu6(model: torch.nn.Module) -> None:
    """Swap fcnseg's ReLU6 for ``nn.ReLU6(inplace=True)``, which clones its input under autograd."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, ReLU6):
                setattr(module, name, torch.nn.ReLU6(inplace=True))


class Trainer:
    """One option's model and optimizer, stepped on demand, its component times kept."""

    def __init__(self, args: argparse.Namespace, option: dict) -> None:
        torch.manual_seed(0)
        model = fcnseg.build_model(args.model, num_classes=11).train()
        if option["torch_relu6"]:
            use_torch_relu6(model)
        self.memory = torch.channels_last if option["channels_last"] else torch.contiguous_format
        self.model = model.to(memory_format=self.memory)
        config = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4).resolved()
        self.optimizer = build_optimizer(self.model, config)
        if option["fused"]:
            self.optimizer = torch.optim.AdamW(self.optimizer.param_groups, lr=1e-3, fused=True)
        self.amp = option["amp"]
        self.criterion = SegmentationLoss(reduction="mean")
        self.parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def step(self, image: torch.Tensor, label: torch.Tensor, *, timed: bool) -> None:
        image = image.contiguous(memory_format=self.memory)
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=bool(self.amp)):
            loss = self.criterion(self.model(image), label)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if timed:
            for name, begin, end in zip(self.parts, marks, marks[1:], strict=False):
                self.parts[name].append(end - begin)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.parts.items()}


def time_options(args, names: list[str], data: list) -> dict[str, dict[str, float]]:
    """Median seconds of forward (with the loss), backward and optimizer, per option.

    The options take turns, one step each, so a neighbour's load on a shared machine
    slows all of them alike instead of whichever option happened to be running.
    """
    trainers = {name: Trainer(args, OPTIONS[name]) for name in names}
    for step, (image, label) in enumerate(data):
        for trainer in trainers.values():
            trainer.step(image, label, timed=step >= 1)  # the first step picks kernels
    return {name: trainer.medians() for name, trainer in trainers.items()}


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
        for name, parts in time_options(args, args.options, data).items():
            step = sum(parts.values()) + load_s
            baseline = baseline or step
            print(
                f"{threads:7d}  {name:19s} {parts['forward']:8.3f} {parts['backward']:9.3f} "
                f"{parts['optimizer']:10.3f} {step:7.3f} {args.batch_size / step:6.1f} "
                f"{baseline / step:6.2f}x"
            )


if __name__ == "__main__":
    main()
