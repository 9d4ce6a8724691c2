"""How inference time and memory grow with the image: whole images, then tiles.

For each side from 256 to 2048 the model runs on a square image whole, in a fresh process
(so the peak resident memory, RSS, is that image's), and the table prints the median time,
the time per megapixel and the RSS above what the loaded model alone holds; both should
grow about linearly with the pixel count. Sliding-window rows (``fcnseg.tiling``) then run
the same sizes and larger in tiles: their memory stays near one tile's, however large the
image. With ``--checkpoint`` (a trained model) the tiled rows also report their argmax
agreement with the whole image where both ran.

    python benchmarks/scaling.py                                  # EfficientNet-Lite0 FCN-8s
    python benchmarks/scaling.py --model fcn8s_vgg16 --sizes 256 512 1024 --tile 512
    python benchmarks/scaling.py --checkpoint runs/camvid-fcn8s-lite0/best.pt --sizes 1024 2048
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from _fresh import in_fresh_process, peak_rss_mib

import fcnseg
from fcnseg.inference import Segmenter
from fcnseg.speed import InferenceOptions, fast_forward, prepare_model
from fcnseg.tiling import Tiling, sliding_window

MIN_SECONDS = 2.0  # each row times at least this long in all


@dataclass(frozen=True)
class Row:
    side: int
    tile: int | None  # None: the whole image at once


def _model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        return Segmenter.from_checkpoint(args.checkpoint).model
    torch.manual_seed(0)
    return prepare_model(fcnseg.build_model(args.model, num_classes=21).eval(), InferenceOptions())


def _measure(args: argparse.Namespace, row: Row, queue) -> None:
    """Median seconds, peak RSS, RSS of the model alone, and the labels (for agreement)."""
    torch.set_num_threads(args.threads)
    model = _model(args)
    loaded = peak_rss_mib()
    torch.manual_seed(1)
    image = torch.randn(1, 3, row.side, row.side)
    forward = partial(fast_forward, model, options=InferenceOptions())
    if row.tile is None:
        run = partial(forward, image)
    else:
        run = partial(sliding_window, forward, image, Tiling.of(row.tile))
    with torch.inference_mode():
        labels = run()[0].argmax(0).to(torch.uint8).numpy()  # the warm-up; numpy pickles
        times: list[float] = []
        while len(times) < args.repeats or sum(times) < MIN_SECONDS:
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    queue.put(
        (statistics.median(times), peak_rss_mib(), loaded, labels if args.checkpoint else None)
    )


def _rows(args: argparse.Namespace) -> list[Row]:
    whole = [Row(side, None) for side in args.sizes]
    sides = sorted({side for side in args.sizes if side > args.tile} | set(args.tiled_sizes))
    return whole + [Row(side, args.tile) for side in sides]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcn8s_efficientnet_lite0")
    parser.add_argument("--checkpoint", help="a trained .pt instead of --model's random head")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 1536, 2048])
    parser.add_argument("--tiled-sizes", type=int, nargs="*", default=[4096], help="tiled only")
    parser.add_argument("--tile", type=int, default=1024, help="tile side (overlap a third)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name = args.checkpoint or args.model
    print(f"{name}, {args.threads} threads, fp32 channels-last, tiles of {args.tile} px")
    print(f"{'input':>11} {'mode':>10} {'MPix':>6} {'time s':>8} {'s/MPix':>7} "
          f"{'RSS MiB':>8} {'+MiB':>7} {'MiB/MPix':>8} {'agree':>6}")  # fmt: skip
    whole_labels: dict[int, np.ndarray] = {}
    for row in _rows(args):
        seconds, peak, loaded, labels = in_fresh_process(_measure, args, row)
        megapixels = row.side**2 / 1e6
        mode = "whole" if row.tile is None else f"tiles {row.tile}"
        agree = "-"
        if labels is not None and row.tile is None:
            whole_labels[row.side] = labels
        elif labels is not None and row.side in whole_labels:
            agree = f"{100 * (labels == whole_labels[row.side]).mean():.2f}%"
        grown = peak - loaded
        print(f"{row.side:>5}x{row.side:<5} {mode:>10} {megapixels:6.2f} {seconds:8.2f} "
              f"{seconds / megapixels:7.2f} {peak:8.0f} {grown:7.0f} {grown / megapixels:8.0f} "
              f"{agree:>6}")  # fmt: skip


if __name__ == "__main__":
    main()
