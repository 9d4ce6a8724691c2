"""Dense output four ways at 500 x 500: the paper's Section 3.2 trade-off, measured.

FCN-32s (stride-32 scores, upsampled 32x), shift-and-stitch of its coarse scores with
factor 4, 8 and 32, the rarefied net at output stride 8 (the same cells as
shift-and-stitch by 4, computed once), and FCN-8s (skips + upsampling),
all VGG16 in the reference's caffe geometry with one set of random weights. Each
configuration runs in a fresh process so its peak resident memory is its own.

    python benchmarks/dense.py                 # 500 x 500, the issue's table
    python benchmarks/dense.py --size 256      # quicker

Shift-and-stitch by 32 needs 1024 forward passes; unless --full is given its time is
extrapolated from --sample copies (its FLOPs are counted for every copy).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import fcnseg
from fcnseg.dense import CoarseScores, rarefy, shift_and_stitch

CONFIGS = ("fcn32s", "stitch4", "rarefied8", "stitch8", "stitch32", "fcn8s")
DESCRIPTION = {
    "fcn32s": "FCN-32s: scores at stride 32, upsampled",
    "stitch4": "shift-and-stitch x4 (16 copies)",
    "stitch8": "shift-and-stitch x8 (64 copies)",
    "stitch32": "shift-and-stitch x32 (1024 copies)",
    "rarefied8": "rarefied, output stride 8",
    "fcn8s": "FCN-8s: pool4 + pool3 skips, upsampled",
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return fcnseg.build_model(name, num_classes=21).eval()


def _runner(config: str, image: torch.Tensor, sample: int | None):
    """(callable, fraction of the full work it does, output stride of the result)."""
    if config in ("fcn32s", "fcn8s"):
        model = _model(f"{config}_vgg16")
        return (lambda: model(image)), 1.0, 1
    coarse = CoarseScores(_model("fcn32s_vgg16"))
    if config == "rarefied8":
        dense = rarefy(coarse, 8)
        return (lambda: dense(image)), 1.0, 8
    factor = int(config.removeprefix("stitch"))
    if sample is None:
        return (lambda: shift_and_stitch(coarse, image, factor)), 1.0, 32 // factor
    step = 32 // factor
    shifts = [(i * factor // sample, (i * 7) % factor) for i in range(sample)]
    copies = [image[..., dy * step :, dx * step :] for dy, dx in shifts]
    return (lambda: [coarse(c) for c in copies]), sample / factor**2, 32 // factor


def _flops(run) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run()
    return counter.get_total_flops()


def _measure(config: str, size: int, repeats: int, sample: int | None, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    image = torch.randn(1, 3, size, size)
    run, fraction, stride = _runner(config, image, sample)
    flops = _flops(run) / fraction
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) / fraction)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((config, statistics.median(times), flops, peak_mib, stride, fraction))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sample", type=int, default=8, help="copies timed for x32")
    parser.add_argument("--full", action="store_true", help="run all 1024 copies for x32")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    queue = context.Queue()
    rows = []
    for config in args.configs:
        sample = None if args.full or config != "stitch32" else args.sample
        process = context.Process(
            target=_measure, args=(config, args.size, args.repeats, sample, queue)
        )
        process.start()
        rows.append(queue.get())
        process.join()
    base_time = rows[0][1] if rows[0][0] == "fcn32s" else None
    print(f"VGG16, caffe geometry, {args.size} x {args.size}, {torch.get_num_threads()} threads")
    print(
        f"{'configuration':42} {'stride':>6} {'time s':>9} {'x FCN-32s':>9} "
        f"{'GFLOP':>9} {'peak RSS MiB':>12}"
    )
    for config, seconds, flops, peak, stride, fraction in rows:
        note = " (extrapolated)" if fraction < 1 else ""
        ratio = f"{seconds / base_time:9.1f}" if base_time else f"{'-':>9}"
        print(
            f"{DESCRIPTION[config] + note:42} {stride:6d} {seconds:9.2f} {ratio} "
            f"{flops / 1e9:9.0f} {peak:12.0f}"
        )


if __name__ == "__main__":
    main()
