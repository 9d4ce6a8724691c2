"""Throughput of the CamVid training pipeline, and its share of a training step.

Measures images per second of decode + joint transforms + collate with 0, 1 and 2 loader
workers, the cost of each stage in the main process, and the time of one SGD step of an
FCN on the same batches; then says whether the loader can keep up with training.

    python benchmarks/data_throughput.py                      # FCN-8s VGG16, batch 1
    python benchmarks/data_throughput.py --model fcn8s_resnet18 --batch-size 4

Reads ../shared/data/camvid (the SegNet layout) unless --root says otherwise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import fcnseg
from fcnseg.data import CamVid, normalization_of, pad_collate, train_transforms
from fcnseg.data.base import read_image, read_label

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--images", type=int, default=96, help="images per loader measurement")
    parser.add_argument("--batch-size", type=int, default=1, help="the reference trains batch 1")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crop", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--model", default="fcn8s_vgg16")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
    return parser.parse_args()


def stage_costs(dataset: CamVid, count: int) -> dict[str, float]:
    """Milliseconds per image of each stage, in the main process."""
    samples = dataset.samples[:count]
    start = time.perf_counter()
    for sample in samples:
        label = read_label(sample.label)
        read_image(sample.image, match=label.shape)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    pairs = [dataset.load(i) for i in range(count)]
    load = time.perf_counter() - start
    start = time.perf_counter()
    pairs = [dataset.transforms(image, label, index=i) for i, (image, label) in enumerate(pairs)]
    transform = time.perf_counter() - start
    start = time.perf_counter()
    for first in range(0, count - 1, 2):
        pad_collate(pairs[first : first + 2])
    collate = time.perf_counter() - start
    per_image = 1000.0 / count
    return {
        "decode (PIL + numpy)": decode * per_image,
        "label table + tensors": (load - decode) * per_image,
        "joint transforms": transform * per_image,
        "collate (pairs)": collate * per_image,
    }


def loader_rate(dataset: CamVid, count: int, batch_size: int, workers: int) -> tuple[float, float]:
    """Images per second through a DataLoader: overall (worker start-up included) and
    steady (after the first batch)."""
    loader = DataLoader(
        Subset(dataset, range(count)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=pad_collate,
    )
    start = time.perf_counter()
    first_done, first_size, seen = 0.0, 0, 0
    for images, _ in loader:
        seen += images.shape[0]
        if not first_done:
            first_done, first_size = time.perf_counter(), seen
    end = time.perf_counter()
    return seen / (end - start), (seen - first_size) / (end - first_done)


def step_time(model: torch.nn.Module, dataset: CamVid, batch_size: int, steps: int) -> float:
    """Seconds per SGD step (forward, loss, backward, update) on real batches."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-10, momentum=0.99)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255, reduction="sum")
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate)
    batches = iter(loader)
    durations = []
    for step in range(steps + 1):  # the first step warms up allocators
        images, labels = next(batches)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        if step:
            durations.append(time.perf_counter() - start)
    return sum(durations) / len(durations)


def main() -> None:
    args = parse_args()
    if not (args.root / "train.txt").is_file():
        raise SystemExit(f"CamVid not found at {args.root}: pass --root <SegNet CamVid folder>")
    model = fcnseg.build_model(args.model, num_classes=len(CamVid.classes))
    normalization = normalization_of(model)  # the convention its weights record
    transforms = train_transforms(normalization, crop_size=tuple(args.crop), seed=0)
    dataset = CamVid(args.root, "train", transforms=transforms)
    count = min(args.images, len(dataset))
    print(
        f"CamVid train, {count} images 480x360, crop {args.crop[0]}x{args.crop[1]}, "
        f"scale 0.5-2, flip, jitter, normalised for {args.model}; "
        f"torch threads {torch.get_num_threads()}"
    )

    print("\nstage (main process)          ms / image")
    for stage, cost in stage_costs(dataset, count).items():
        print(f"  {stage:<28}{cost:8.2f}")

    print(f"\nloader workers   images / s   steady / s   (batch {args.batch_size})")
    rates = {}
    for workers in args.workers:
        overall, rates[workers] = loader_rate(dataset, count, args.batch_size, workers)
        print(f"  {workers:<15}{overall:10.1f}{rates[workers]:13.1f}")

    seconds = step_time(model, dataset, args.batch_size, args.steps)
    load = args.batch_size / rates[min(rates)]
    print(
        f"\ntraining step ({args.model}, batch {args.batch_size}): {seconds:.2f} s "
        f"= {args.batch_size / seconds:.2f} images / s"
    )
    print(
        f"loading one batch in the main process: {load * 1000:.1f} ms "
        f"= {100 * load / (load + seconds):.1f}% of a serial step"
    )
    best = max(rates.values())
    verdict = "keeps up" if best >= args.batch_size / seconds else "IS THE BOTTLENECK"
    print(
        f"best loader rate {best:.1f} images / s vs training {args.batch_size / seconds:.2f}: "
        f"the loader {verdict}"
    )


if __name__ == "__main__":
    main()
