"""Smoke run of every command that takes a device, on that device: what the CPU tests fake.

The tests prove on the CPU that models, batches, scores and generator states stay on the
device asked for (tests/test_devices.py); this runs the commands themselves on a real one,
each as a user would (``python -m fcnseg ...`` in its own process), on tiny synthetic data,
and prints one row per command: its exit status, its seconds and its last stderr line.

    python benchmarks/gpu_smoke.py                  # --device cuda
    python benchmarks/gpu_smoke.py --device cpu     # the same commands on the CPU

Train, resume with fp16 (bf16 on the CPU) where the saved run had no scaler, eval (the
default engine, --per-image, onnxruntime when installed) and predict. Exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.engines import installed

MODEL = "fcn32s_efficientnet_lite0"
SIZE = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    return parser.parse_args()


def config(folder: Path, device: str) -> Path:
    """A two-step training run on synthetic images, with amp off (no GradScaler state)."""
    values = {
        "model": MODEL,
        "train_options": {"size": SIZE, "num_images": 4},
        "val_options": {"size": SIZE, "num_images": 2},
        "epochs": 1,
        "batch_size": 2,
        "num_workers": 0,
        "overlays": 0,
        "amp": "off",
        "device": device,
    }
    path = folder / "smoke.json"
    path.write_text(json.dumps(values))
    return path


def images(folder: Path) -> Path:
    """Two RGB images for fcnseg predict."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(2):
        pixels = generator.integers(0, 256, (SIZE, SIZE + 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index}.png")
    return folder


def commands(folder: Path, device: str) -> list[tuple[str, list[str]]]:
    """(name, fcnseg arguments) in the order they build on each other."""
    run = folder / "run"
    fp16 = "bf16" if device == "cpu" else "fp16"
    checkpoint = str(run / "last.pt")
    data = ["--data", "synthetic", "--option", f"size={SIZE}", "--option", "num_images=2"]
    evaluate = ["eval", "--checkpoint", checkpoint, *data, "--workers", "0", "--device", device]
    rows = [
        ("train", ["train", "--config", str(config(folder, device)), "--run-dir", str(run)]),
        (f"resume, amp {fp16}", ["train", "--resume", str(run), "epochs=2", f"amp={fp16}"]),
        ("eval", [*evaluate, "--out", str(folder / "eval.json")]),
        ("eval --per-image", [*evaluate, "--per-image", str(folder / "scores.csv")]),
    ]
    if installed("onnxruntime"):
        out = str(folder / "eval-onnx.json")
        rows.append(("eval onnxruntime", [*evaluate, "--engine", "onnxruntime", "--out", out]))
    predict = ["predict", "--checkpoint", checkpoint, "--device", device, "--out"]
    rows.append(("predict", [*predict, str(folder / "masks"), str(images(folder / "images"))]))
    return rows


def run(name: str, arguments: list[str]) -> tuple[str, int, float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fcnseg", *arguments], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    last = (result.stderr.strip().splitlines() or [""])[-1]
    return name, result.returncode, seconds, last[:100]


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fcnseg-smoke-") as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        results = [run(name, arguments) for name, arguments in commands(folder, args.device)]
    print(f"{'command':<22} {'status':>6} {'seconds':>8}  last stderr line")
    for name, status, seconds, last in results:
        print(f"{name:<22} {status:>6} {seconds:>8.1f}  {last}")
    return 1 if any(status != 0 for _, status, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
