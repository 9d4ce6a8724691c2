"""Smoke run of every command that takes a device, on that device: what the CPU tests fake.

The tests prove on the CPU that models, batches, scores and generator states stay on the
device asked for (tests/test_devices.py); this runs the commands themselves on a real one,
each as a user would (``python -m fcnseg ...`` in its own process), on tiny synthetic data,
and prints one row per check: its status, its seconds and what it found (or the command's
last stderr line).

    python benchmarks/gpu_smoke.py                  # --device cuda: under 10 minutes
    python benchmarks/gpu_smoke.py --device cpu     # the same commands on the CPU (CI)
    python benchmarks/gpu_smoke.py --device cpu --quick   # one of each kind (the test)

Train with bf16 and the moving average, resume with fp16 and a GradScaler (bf16 on the CPU)
from that scaler-less run, eval with every installed engine, ``--per-image`` and ``--tta``,
predict whole and tiled and compare the labels with the CPU's, export ONNX from a model on
the device, provoke a GPU out-of-memory (one line, exit 1), count host syncs per training
step (``torch.cuda.set_sync_debug_mode``) and time the steps. Rows that need a GPU say
"skipped: no GPU" on the CPU. Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.config import TrainConfig
from fcnseg.engines import installed
from fcnseg.export import export_onnx
from fcnseg.inference import Segmenter
from fcnseg.training.stages import train

MODEL = "fcn32s_efficientnet_lite0"
SIZE = 64
NO_GPU = "skipped: no GPU"


@dataclass(frozen=True)
class Row:
    name: str
    status: int | str  # an exit status, "ok", "FAILED" or "skipped"
    seconds: float
    note: str

    @property
    def failed(self) -> bool:
        return self.status not in (0, "ok", "skipped")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--quick", action="store_true", help="one check of each kind (the test's CPU run)"
    )
    return parser.parse_args()


def on_gpu(device: str) -> bool:
    return torch.device(device).type == "cuda"


def train_values(device: str, **more) -> dict:
    """A two-step run on synthetic images, bf16 with the moving average."""
    return {
        "model": MODEL,
        "train_options": {"size": SIZE, "num_images": 4},
        "val_options": {"size": SIZE, "num_images": 2},
        "epochs": 1,
        "batch_size": 2,
        "num_workers": 0,
        "overlays": 0,
        "amp": "bf16",
        "ema_decay": 0.9,
        "device": device,
        **more,
    }


def config(folder: Path, name: str, values: dict) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


def images(folder: Path) -> Path:
    """Two RGB images for fcnseg predict, larger than a tile."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(2):
        pixels = generator.integers(0, 256, (SIZE, SIZE + 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index}.png")
    return folder


def fcnseg(name: str, arguments: list[str], *, expect: int = 0, needs: str = "") -> Row:
    """``python -m fcnseg ...`` in its own process; ``expect``: the exit status asked for,
    ``needs``: a text its last stderr line must hold."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fcnseg", *arguments], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    last = (result.stderr.strip().splitlines() or [""])[-1][:100]
    ok = result.returncode == expect and needs in last
    status = (0 if expect == 0 else "ok") if ok else (result.returncode or "FAILED")
    return Row(name, status, seconds, last)


def timed(name: str, check: Callable[[], str]) -> Row:
    """An in-process check: its note, or FAILED with the error's line."""
    start = time.perf_counter()
    try:
        note, status = check(), "ok"
    except Exception as error:  # the smoke run reports every check, failed or not
        note, status = f"{type(error).__name__}: {error}"[:100], "FAILED"
    return Row(name, status, time.perf_counter() - start, note)


def training_rows(folder: Path, device: str) -> list[Row]:
    run = folder / "run"
    fp16 = "fp16" if on_gpu(device) else "bf16"
    first = config(folder, "smoke", train_values(device))
    return [
        fcnseg("train bf16 + average", ["train", "--config", str(first), "--run-dir", str(run)]),
        fcnseg(
            f"resume {fp16} + average",
            ["train", "--resume", str(run), "epochs=2", f"amp={fp16}"],
        ),
    ]


def eval_rows(folder: Path, device: str, quick: bool) -> list[Row]:
    checkpoint = str(folder / "run" / "last.pt")
    data = ["--data", "synthetic", "--option", f"size={SIZE}", "--option", "num_images=2"]
    evaluate = ["eval", "--checkpoint", checkpoint, *data, "--workers", "0", "--device", device]
    engines = ["torch"] if quick else ["torch", "onnxruntime", "openvino"]
    rows = []
    for engine in engines:
        if not installed(engine):
            rows.append(Row(f"eval {engine}", "skipped", 0.0, f"skipped: {engine} not installed"))
            continue
        out = str(folder / f"eval-{engine}.json")
        rows.append(fcnseg(f"eval {engine}", [*evaluate, "--engine", engine, "--out", out]))
    rows.append(fcnseg("eval --per-image", [*evaluate, "--per-image", str(folder / "scores.csv")]))
    if not quick:
        rows.append(fcnseg("eval --tta", [*evaluate, "--tta", "--out", str(folder / "tta.json")]))
    return rows


def predict_rows(folder: Path, device: str, quick: bool) -> list[Row]:
    """Whole and tiled on the device; on a GPU the same on the CPU, labels compared."""
    checkpoint = str(folder / "run" / "last.pt")
    inputs = str(images(folder / "images"))
    rows = []
    for how, extra in [("whole", []), ("tiled", ["--tile", str(SIZE // 2)])][: 1 if quick else 2]:
        ours, cpu = folder / f"masks-{how}", folder / f"masks-{how}-cpu"
        common = ["predict", "--checkpoint", checkpoint, "--no-overlay", *extra]
        rows.append(
            fcnseg(f"predict {how}", [*common, "--device", device, "--out", str(ours), inputs])
        )
        if not on_gpu(device):
            rows.append(Row(f"predict {how}: GPU = CPU", "skipped", 0.0, NO_GPU))
            continue
        fcnseg(f"predict {how} on cpu", [*common, "--device", "cpu", "--out", str(cpu), inputs])
        rows.append(timed(f"predict {how}: GPU = CPU", lambda o=ours, c=cpu: agreement(o, c)))
    return rows


def agreement(ours: Path, cpu: Path) -> str:
    """The share of pixels whose label the device and the CPU agree on, over every mask."""
    same = total = 0
    for mask in sorted(ours.glob("*.png")):
        a, b = np.asarray(Image.open(mask)), np.asarray(Image.open(cpu / mask.name))
        same, total = same + int((a == b).sum()), total + a.size
    if total == 0:
        raise RuntimeError(f"no masks in {ours}")
    share = same / total
    if share < 0.99:
        raise RuntimeError(f"labels agree on only {100 * share:.2f}% of pixels")
    return f"labels agree on {100 * share:.2f}% of {total} pixels"


def export_row(folder: Path, device: str) -> Row:
    def export() -> str:
        model = Segmenter.from_checkpoint(folder / "run" / "last.pt", device=device).model
        where = next(model.parameters()).device
        path = export_onnx(model, folder / "model.onnx", example_size=(SIZE, SIZE))
        return f"from a model on {where}: {path.stat().st_size // 1024} KiB"

    if not installed("onnxruntime"):
        return Row("export onnx", "skipped", 0.0, "skipped: onnx not installed")
    return timed("export onnx", export)


def out_of_memory_row(folder: Path, device: str) -> Row:
    """A batch no GPU holds: one line naming what to lower, exit 1."""
    if not on_gpu(device):
        return Row("out of memory", "skipped", 0.0, NO_GPU)
    huge = {"train_options": {"size": 4096, "num_images": 32}, "batch_size": 32, "amp": "off"}
    path = config(folder, "huge", train_values(device, ema_decay=0.0, **huge))
    arguments = ["train", "--config", str(path), "--run-dir", str(folder / "huge")]
    return fcnseg("out of memory", arguments, expect=1, needs="out of memory")


@contextlib.contextmanager
def sync_warnings(device: str):
    """The warnings caught inside the block; on a GPU each host sync is one of them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if on_gpu(device):
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            if on_gpu(device):
                torch.cuda.set_sync_debug_mode("default")


def steps_row(folder: Path, device: str) -> Row:
    """Seconds per step and, on a GPU, host syncs per step (``set_sync_debug_mode``); bf16
    on a GPU, fp32 on the CPU (bf16 there pays only with AMX)."""

    def measure() -> str:
        amp = "bf16" if on_gpu(device) else "off"
        values = train_values(device, amp=amp, log_every=1000, eval_every=1000, threads=0)
        values.update(train_options={"size": SIZE, "num_images": 8}, output=str(folder))
        seconds, marks = [], []
        with sync_warnings(device) as caught:

            def step(info) -> bool:
                seconds.append(info.seconds)
                marks.append(sum("synchroniz" in str(w.message) for w in caught))
                return False

            with contextlib.redirect_stdout(io.StringIO()):  # the table is the output
                train(TrainConfig(**values, name="steps"), callbacks=[step])
        median = 1000 * statistics.median(seconds[1:] or seconds)
        syncs = [b - a for a, b in zip(marks[1:], marks[2:], strict=False)]
        counted = f"{max(syncs)} host sync(s) per step" if syncs and on_gpu(device) else NO_GPU
        return f"{len(seconds)} steps, median {median:.0f} ms a step; syncs: {counted}"

    return timed("training steps", measure)


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fcnseg-smoke-") as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        rows = training_rows(folder, args.device)
        rows += eval_rows(folder, args.device, args.quick)
        rows += predict_rows(folder, args.device, args.quick)
        rows.append(export_row(folder, args.device))
        rows.append(out_of_memory_row(folder, args.device))
        if not args.quick:
            rows.append(steps_row(folder, args.device))
    print(f"{'check':<26} {'status':>7} {'seconds':>8}  found / last stderr line")
    for row in rows:
        print(f"{row.name:<26} {row.status!s:>7} {row.seconds:>8.1f}  {row.note}")
    print(f"{len(rows)} checks in {time.perf_counter() - started:.0f} s on {args.device}")
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
