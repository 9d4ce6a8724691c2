"""From the user's image to the label map against the network alone (issue 31).

The zoo's CamVid FCN-8s Lite0, fp32 on torch, onnxruntime and OpenVINO, and its int8 file
on onnxruntime and OpenVINO, at 360 x 480 (CamVid), 500 x 500 (VOC-like) and 1024 x 2048
(Cityscapes-like). Per row, medians over ``--calls`` after a warm-up, in ms:

    network     the engine called directly on the prepared (normalised) batch: torch's
                model on the channels-last batch; the ONNX file as exported, in a session
                (onnxruntime) or compiled for any size (OpenVINO) of its own
    predict     ``Segmenter.predict`` of the H x W x 3 uint8 array, end to end
    prepare     the array to the normalised batch (``Segmenter.batch``)
    label map   scores to the H x W uint8 labels

and predict / network (target: at most 1.15 for Lite0 at 360 x 480). Each engine runs in
a fresh process on ``--threads`` threads.

    python benchmarks/end_to_end.py                      # about 4 minutes on 2 cores
    python benchmarks/end_to_end.py --sizes 360x480 --calls 20
"""

from __future__ import annotations

import argparse
import statistics
import time

from _fresh import in_fresh_process
from _machine import cpu_name

ENTRY = "fcn8s_efficientnet_lite0.camvid"
ROWS = (
    ("torch fp32", "torch", False),
    ("onnxruntime fp32", "onnxruntime", False),
    ("openvino fp32", "openvino", False),
    ("onnxruntime int8", "onnxruntime", True),
    ("openvino int8", "openvino", True),
)


def _median_ms(function, calls: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(engine: str, int8: bool, sizes: list, threads: int, calls: int, queue) -> None:
    import torch

    import fcnseg

    torch.set_num_threads(threads)
    segmenter = fcnseg.Segmenter.from_pretrained(ENTRY, int8=int8, engine=engine, threads=threads)
    queue.put([_row(segmenter, engine, threads, h, w, calls) for h, w in sizes])


def _row(segmenter, engine: str, threads: int, height: int, width: int, calls: int) -> dict:
    import numpy as np
    import torch

    from fcnseg.inference import _label_map
    from fcnseg.speed import fast_forward

    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    batch = segmenter.batch(image)
    scores = segmenter.scores(batch)[segmenter.tasks[0]][0]
    if engine == "torch":
        prepared = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}

        def network():
            with torch.inference_mode():
                segmenter._runner(prepared)
    else:
        network = _plain_engine(
            segmenter, engine, threads, {k: v.numpy() for k, v in batch.items()}
        )

    return {
        "size": f"{height}x{width}",
        "network": _median_ms(network, calls),
        "predict": _median_ms(lambda: segmenter.predict(image), calls),
        "prepare": _median_ms(lambda: segmenter.batch(image), calls),
        "forward": _median_ms(
            lambda: fast_forward(segmenter._scores, batch, segmenter.speed), calls
        ),  # fmt: skip
        "label map": _median_ms(lambda: _label_map(scores, False), calls),
    }


def _plain_engine(segmenter, engine: str, threads: int, feed: dict):
    """The exported file as its engine runs it, called directly: no arg-max added, no copy
    of the scores, the model compiled for any size (what a user calling the engine gets)."""
    import numpy as np

    runner = segmenter.model.runner
    if engine == "openvino":
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}  # fmt: skip
        request = core.compile_model(core.read_model(str(runner.path)), "CPU", config).create_infer_request()  # fmt: skip
        return lambda: request.infer(feed, share_outputs=True)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(runner.path), options, providers=["CPUExecutionProvider"])  # fmt: skip
    feed = {name: np.ascontiguousarray(array) for name, array in feed.items()}
    return lambda: session.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["360x480", "500x500", "1024x2048"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--rows", nargs="+", default=[name for name, _, _ in ROWS])
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    print(f"{ENTRY}, {args.threads} threads, median of {args.calls} calls; {cpu_name()}")
    header = f"{'row':<18} {'size':>9} {'network':>8} {'predict':>8} {'ratio':>6} {'prepare':>8} {'forward':>8} {'labels':>7}"  # fmt: skip
    print(header)
    for name, engine, int8 in ROWS:
        if name not in args.rows:
            continue
        for row in in_fresh_process(measure, engine, int8, sizes, args.threads, args.calls):
            ratio = row["predict"] / row["network"]
            print(f"{name:<18} {row['size']:>9} {row['network']:>8.1f} {row['predict']:>8.1f} {ratio:>6.2f} {row['prepare']:>8.1f} {row['forward']:>8.1f} {row['label map']:>7.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
