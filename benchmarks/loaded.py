"""Inference and training on a machine with a busy core, against the same on an idle one
(issue 29).

Each row runs in a fresh process (OpenMP reads its settings once, when torch loads):
``Segmenter.predict`` of a 360 x 480 frame with the zoo's CamVid FCN-8s Lite0 on each engine
and thread count, torch with each OpenMP wait setting of ``WAITS`` (libgomp's default spins
300,000 times before sleeping; ``PASSIVE`` sleeps at once; a short spin count between); and
training steps of the same net (batches of 4 random 256 x 256 crops, AdamW). Every row is timed idle,
then loaded: beside a process of our own that keeps one core busy (a Python loop, as
another job on a shared machine would). Medians, in ms per image or per step, and the
loaded/idle ratio.

    python benchmarks/loaded.py              # about 5 minutes on 2 cores
    python benchmarks/loaded.py --only infer --calls 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

from _machine import cpu_name

ENGINES = ("torch", "onnxruntime", "openvino")
# OpenMP's wait settings, as the environment of a fresh process
WAITS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
}
ENTRY = "fcn8s_efficientnet_lite0.camvid"


def _spin(stop) -> None:  # the other job: one core, busy
    while not stop.is_set():
        sum(range(10_000))


def infer(engine: str, threads: int, calls: int) -> float:
    import torch

    import fcnseg
    from fcnseg.zoo import check_image

    if threads != "auto":
        torch.set_num_threads(threads)
    segmenter = fcnseg.Segmenter.from_pretrained(ENTRY, engine=engine, threads=threads)
    image = check_image()
    for _ in range(3):
        segmenter.predict(image)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        segmenter.predict(image)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def train(threads: int, calls: int) -> float:
    import torch

    import fcnseg

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=11).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x, y = torch.randn(4, 3, 256, 256), torch.randint(0, 11, (4, 256, 256))
    times = []
    for index in range(calls + 2):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= 2:  # two warm-up steps
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _row(kind: str, engine: str, threads: int, wait: str, calls: int) -> float:
    """One measurement in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(WAITS[wait])
    command = [sys.executable, __file__, "--worker", kind, "--engine", engine,
               "--threads", str(threads), "--calls", str(calls)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["ms"]


def _loaded(measure) -> float:
    stop = mp.Event()
    busy = mp.Process(target=_spin, args=(stop,), daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        return measure()
    finally:
        stop.set()
        busy.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("infer", "train"))
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument(
        "--threads", type=_count, nargs="+", default=[1, os.cpu_count() or 2, "auto"]
    )
    parser.add_argument("--waits", nargs="+", choices=WAITS, default=list(WAITS))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--worker", choices=("infer", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = infer if args.worker == "infer" else train
        options = (args.engine,) if args.worker == "infer" else ()
        print(json.dumps({"ms": work(*options, args.threads[0], args.calls)}))
        return
    rows = []
    if args.only != "train":
        for engine in args.engines:
            for wait in args.waits if engine == "torch" else ["default"]:
                rows += [("infer", engine, t, wait) for t in args.threads]
    if args.only != "infer":
        counts = [t for t in args.threads if t != "auto"]  # auto: Segmenter only
        rows += [("train", "torch", t, wait) for wait in args.waits for t in counts]
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; median ms per image (infer) or per step (train)")
    print(f"{'what':6} {'engine':12} {'threads':>7} {'wait':8} {'idle':>8} {'loaded':>8} {'ratio':>6}")  # fmt: skip
    for kind, engine, threads, wait in rows:
        if threads == "auto" and engine != "torch":
            continue  # the ONNX engines take torch's count for auto
        calls = args.calls if kind == "infer" else max(4, args.calls // 5)
        idle = _row(kind, engine, threads, wait, calls)
        loaded = _loaded(lambda: _row(kind, engine, threads, wait, calls))  # noqa: B023
        wait = wait if engine == "torch" else "-"
        print(f"{kind:6} {engine:12} {threads!s:>7} {wait:8} {idle:8.1f} {loaded:8.1f} "
              f"{loaded / idle:5.1f}x", flush=True)  # fmt: skip


def _count(text: str) -> int | str:
    return text if text == "auto" else int(text)


if __name__ == "__main__":
    main()
