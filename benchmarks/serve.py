"""``fcnseg serve`` under load (issue 29): 1, 4 and 16 concurrent clients on 127.0.0.1
against single-process loops of the same engine, in one run.

The zoo's CamVid FCN-8s Lite0 answers real 360 x 480 CamVid val frames (PNG bodies). First
the loops, in this process with the server not yet started: ``Segmenter.predict`` over the
decoded frames, one at a time and in batches of 8 (the engine alone), and the server's work
per request without HTTP (decode the PNG body, predict, encode the mask PNG): "x loop" is
the server's throughput over that last loop. Then ``fcnseg serve`` starts as its own
process and each client thread posts frames over a keep-alive connection; every answer is
decoded and compared with the loop's mask of that frame. Per client count: throughput,
p50/p99 latency, errors, wrong masks (and their differing pixels) and the server's RSS
before and after. The clients run on the same machine: on 2 cores they take CPU from the
server.

    python benchmarks/serve.py                       # torch and openvino, 2,000 requests each
    python benchmarks/serve.py --engines openvino --threads 1 --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _machine import cpu_name
from PIL import Image

ENTRY = "fcn8s_efficientnet_lite0.camvid"
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def frames(count: int) -> list[Path]:
    paths = sorted((CAMVID / "val").glob("*.png"))[:count]
    if not paths:
        sys.exit(f"no CamVid val frames under {CAMVID / 'val'}")
    return paths


def baseline(engine: str, paths: list[Path], seconds: float, threads: int | None):
    """Images per second of the single-process loops, and each frame's mask: the engine
    alone on decoded frames (one at a time, in batches of 8), and the server's work per
    request without HTTP (decode the PNG body, predict, encode the mask PNG)."""
    import fcnseg
    from fcnseg.inference import mask_image, png_bytes
    from fcnseg.serving.uploads import decode_image

    segmenter = fcnseg.Segmenter.from_pretrained(ENTRY, engine=engine, threads=threads)
    bodies = [path.read_bytes() for path in paths]
    images = [decode_image(body, 1 << 30) for body in bodies]
    masks = [segmenter.predict(image) for image in images]
    palette = segmenter.palette

    def same_work(index: int) -> None:
        labels = segmenter.predict(decode_image(bodies[index % len(bodies)], 1 << 30))
        png_bytes(mask_image(labels, palette))

    loops = {
        "engine, one at a time": (1, lambda i: segmenter.predict(images[i % len(images)])),
        "engine, batches of 8": (
            8,
            lambda i: segmenter.predict([images[(i + k) % len(images)] for k in range(8)]),
        ),  # fmt: skip
        "decode + predict + encode": (1, same_work),
    }
    rates = {}
    for name, (size, call) in loops.items():
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            call(done)
            done += size
        rates[name] = done / (time.perf_counter() - started)
    return rates, masks


def start_server(engine: str, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "fcnseg", "serve", "--pretrained", ENTRY, "--port", "0"]
    command += ["--engine", engine, "--max-batch", str(max_batch)]
    command += ["--threads", str(threads)] if threads else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    banner = process.stdout.readline()
    if not banner.startswith("serving "):
        process.kill()
        sys.exit(f"fcnseg serve did not start: {banner!r}")
    port = int(banner.split(" on ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])
    return process, port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, bodies: list[bytes], masks: list[np.ndarray], clients: int, total: int):
    """``total`` requests from ``clients`` threads; latencies, errors and wrong masks."""
    latencies: list[float] = []
    errors, wrong, wrong_pixels = [], 0, []
    lock, counter = threading.Lock(), iter(range(total))

    def client() -> None:
        nonlocal wrong
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            frame = index % len(bodies)
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/segment", bodies[frame], {"Content-Type": "image/png"})  # fmt: skip
                answer = connection.getresponse()
                body = answer.read()
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                with lock:
                    errors.append(repr(error))
                continue
            elapsed = time.perf_counter() - started
            if answer.status != 200:
                with lock:
                    errors.append(f"{answer.status}: {body[:200]!r}")
                continue
            labels = np.asarray(Image.open(io.BytesIO(body)))
            differing = int((labels != masks[frame]).sum())
            with lock:
                latencies.append(elapsed)
                if differing:
                    wrong += 1
                    wrong_pixels.append(differing)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return wall, latencies, errors, wrong, wrong_pixels


def run_engine(engine: str, args, paths: list[Path]) -> dict:
    rates, masks = baseline(engine, paths, args.baseline_seconds, args.threads)
    best = rates["decode + predict + encode"]  # the same work as a request, without HTTP
    print(f"\n{engine}, --threads {args.threads or 'default'}, --max-batch {args.max_batch}: single-process loops " + ", ".join(f"{k} {v:.1f} img/s" for k, v in rates.items()), flush=True)  # fmt: skip
    bodies = [path.read_bytes() for path in paths]
    process, port = start_server(engine, args.max_batch, args.threads)
    rows = []
    try:
        load(port, bodies, masks, 2, 2 * len(bodies))  # warm-up
        print(f"{'clients':>7} {'img/s':>6} {'x loop':>6} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'wrong':>5} {'RSS MB':>13}")  # fmt: skip
        for clients in args.clients:
            before = rss_mb(process.pid)
            wall, latencies, errors, wrong, wrong_pixels = load(
                port, bodies, masks, clients, args.requests
            )
            after = rss_mb(process.pid)
            rate = len(latencies) / wall
            quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
            row = {
                "clients": clients,
                "images_per_s": rate,
                "vs_loop": rate / best,
                "p50_ms": 1000 * quantiles[49],
                "p99_ms": 1000 * quantiles[98],
                "errors": len(errors),
                "wrong_masks": wrong,
                "wrong_pixels_max": max(wrong_pixels, default=0),
                "rss_mb": (before, after),
            }
            rows.append(row)
            print(f"{clients:>7} {rate:>6.1f} {rate / best:>6.2f} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} {len(errors):>6} {wrong:>5} {before:>6.0f}->{after:<6.0f}", flush=True)  # fmt: skip
            for error in errors[:3]:
                print(f"        error: {error}")
            if wrong:
                print(f"        {wrong} masks differ, at most {max(wrong_pixels)} pixels of {masks[0].size}")  # fmt: skip
    finally:
        process.terminate()
        process.wait(60)
    return {"engine": engine, "loops": rates, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["torch", "openvino"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2000, help="per client count")
    parser.add_argument("--frames", type=int, default=24, help="distinct CamVid val frames")
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, help="the engine's (default: its own)")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"fcnseg serve under load: {ENTRY}, CamVid val 360x480 PNG bodies; {cpu_name()}")
    paths = frames(args.frames)
    results = [run_engine(engine, args, paths) for engine in args.engines]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
