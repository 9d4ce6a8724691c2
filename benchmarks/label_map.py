"""The arg-max that turns scores into a label map, against torch's ``argmax`` (issue 31).

``Segmenter.predict`` spent as long on ``scores.argmax(0)`` as OpenVINO spent on the network.
Times, per score size, torch's ``argmax`` over the class dimension (the baseline, what
fcnseg called before), ``max(dim).indices`` (``fcnseg.metrics.class_labels``, what it calls
now) and numpy's ``argmax``, on C x H x W scores as the engines return them (contiguous) and
as a channels-last model returns them; checks that all agree.

    python benchmarks/label_map.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fcnseg.metrics import class_labels

SIZES = {"CamVid 360x480": (11, 360, 480), "VOC 500x500": (21, 500, 500), "Cityscapes 1024x2048": (19, 1024, 2048)}  # fmt: skip


def best_ms(call, repeats: int) -> float:
    """The median of ``repeats`` timed calls, after one warm-up, in ms."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); median of {args.repeats} calls")
    print(f"{'scores':22} {'layout':13} {'argmax':>9} {'max.indices':>12} {'numpy':>9} {'speed-up':>9}")  # fmt: skip
    for name, shape in SIZES.items():
        scores = torch.randn(1, *shape)
        layouts = {"contiguous": scores, "channels-last": scores.contiguous(memory_format=torch.channels_last)}  # fmt: skip
        for layout, batch in layouts.items():
            one = batch[0]
            assert torch.equal(class_labels(one, 0), one.argmax(0))
            base = best_ms(lambda one=one: one.argmax(0), args.repeats)
            ours = best_ms(lambda one=one: class_labels(one, 0), args.repeats)
            array = one.numpy()
            numpy = best_ms(lambda array=array: np.argmax(array, axis=0), args.repeats)
            print(f"{name:22} {layout:13} {base:8.2f}  {ours:11.2f}  {numpy:8.2f}  {base / ours:8.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
