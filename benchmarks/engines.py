"""Inference engines side by side: torch eager, torch compiled, onnxruntime, OpenVINO, int8.

Speed: FCN-8s VGG16 at 500 x 500 and FCN-8s EfficientNet-Lite0 at 360 x 480 (random
weights: speed does not depend on them), batch of one, at 1 and 2 threads; each row in a
fresh process (its peak RSS is its own), median of the timed calls after a warm-up; ratios
over torch eager of the same run. The int8 files are calibrated on a few random images
(their speed holds, their accuracy says nothing); OpenVINO runs the same QDQ file. "int8
mixed" keeps ``--mixed-fp32`` activations fp32 (default 4, what 99% label agreement took
on CamVid), chosen as in the accuracy part.

Accuracy (``--camvid``): a CamVid-trained FCN-8s Lite0 checkpoint on the val split: mean IU
of fp32, of int8 (onnxruntime's quantizer, 200 training images, with the head in fp32 and
quantized too) with its label agreement, and of TTA (flip; flip and 0.75/1/1.25) with its
time per image. ``--fp32-activations 0 4 8`` adds mixed precision: the activations the first
int8 file rounds worst (by signal-to-quantization-noise ratio) kept fp32, 0, 4 and 8 of them,
each file's agreement, mean IU and time per image against torch eager and OpenVINO fp32.

    python benchmarks/engines.py                                 # speed (about 10 minutes)
    python benchmarks/engines.py --only accuracy --camvid runs/x/best.pt --root data/CamVid
    python benchmarks/engines.py --only accuracy --camvid runs/x/best.pt --root data/CamVid \
        --threads 1 --calibrations --fp32-activations 0 4 8 16 --no-tta

Files (checkpoints, ONNX, int8) go to ``--work`` (default /tmp/fcnseg-engines): delete it
after.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _fresh import in_fresh_process
from _machine import cpu_name

import fcnseg
from fcnseg.engines import cached_onnx, choose_engine, installed, onnx_module
from fcnseg.inference import Segmenter
from fcnseg.modelfile import record_of
from fcnseg.speed import InferenceOptions
from fcnseg.training import checkpoint as ckpt

NETS = {"vgg16": ("fcn8s_vgg16", 21, (500, 500)), "lite0": ("fcn8s_efficientnet_lite0", 11, (360, 480))}
ROWS = ("torch", "torch compiled", "onnxruntime", "openvino", "int8 onnxruntime", "int8 openvino",
        "int8 mixed openvino")
MIN_SECONDS = 4.0


def _checkpoint(net: str, work: Path) -> Path:
    path = work / f"{net}.pt"
    if not path.is_file():
        name, classes, _ = NETS[net]
        torch.manual_seed(0)
        model = fcnseg.build_model(name, num_classes=classes)
        with torch.no_grad():  # score layers start at zero: vary them
            for key, parameter in model.head.named_parameters():
                if key.startswith("score"):
                    parameter.normal_(0, 0.01)
        ckpt.save_checkpoint(record_of(model), path)
    return path


def _int8(net: str, path: Path, spec, work: Path, fp32_activations: int) -> None:
    """The int8 files, calibrated on 4 random 224 x 224 images (speed only): all-int8, and
    mixed with the ``fp32_activations`` it rounds worst kept fp32 (random weights pick other
    activations than a trained net would, but as many, each costing its neighbours' int8)."""
    from fcnseg.quantize import keep_fp32, quantize_onnx, sensitive_activations

    out, mixed = work / f"{net}.int8.onnx", _mixed_file(net, work, fp32_activations)
    if out.is_file() and mixed.is_file():
        return
    rng = np.random.default_rng(0)
    batches = [{spec.input_names[0]: rng.normal(0, 1, (1, 3, 224, 224)).astype(np.float32)}
               for _ in range(4)]  # fmt: skip
    if not out.is_file():
        quantize_onnx(cached_onnx(path), out, batches)
    if not mixed.is_file():
        ranked = sensitive_activations(cached_onnx(path), out, batches)
        keep = [name for name, _ in ranked[:fp32_activations]]
        print(f"{net}: mixed int8 keeps fp32: {', '.join(keep)}", flush=True)
        shutil.copyfile(out, mixed)
        keep_fp32(mixed, cached_onnx(path), keep)


def _mixed_file(net: str, work: Path, fp32_activations: int) -> Path:
    return work / f"{net}.int8-{fp32_activations}fp32.onnx"


def _segmenter(row: str, net: str, work: Path, threads: int, fp32_activations: int) -> Segmenter:
    path = work / f"{net}.pt"
    if row == "torch":
        return Segmenter.from_checkpoint(path, engine="torch")
    if row == "torch compiled":
        return Segmenter.from_checkpoint(path, speed=InferenceOptions(compile=True))
    if row.startswith("int8"):
        mixed = "mixed" in row
        file = _mixed_file(net, work, fp32_activations) if mixed else work / f"{net}.int8.onnx"
        return Segmenter.from_onnx(file, engine=row.split()[-1], threads=threads)
    return Segmenter.from_checkpoint(path, engine=row, threads=threads)


def _measure(row: str, net: str, work: Path, threads: int, fp32_activations: int, queue) -> None:
    torch.set_num_threads(threads)
    height, width = NETS[net][2]
    start = time.perf_counter()
    segmenter = _segmenter(row, net, work, threads, fp32_activations)
    batch = segmenter.batch(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))
    segmenter.scores(batch)  # warm-up (compiles, for torch compiled)
    segmenter.scores(batch)
    ready = time.perf_counter() - start
    times: list[float] = []
    while len(times) < 3 or (sum(times) < MIN_SECONDS and len(times) < 30):
        tick = time.perf_counter()
        segmenter.scores(batch)
        times.append(time.perf_counter() - tick)
    queue.put((statistics.median(times), len(times), peak_rss_mib(), ready))


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM: getrusage's ru_maxrss carries
    the parent's peak into a spawned child, which would floor every row at the parent's)."""
    with open("/proc/self/status") as file:
        line = next(line for line in file if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _load() -> str:
    with open("/proc/loadavg") as file:
        return " ".join(file.read().split()[:3])


def speed(args: argparse.Namespace) -> None:
    for net in args.nets:
        path = _checkpoint(net, args.work)
        tick = time.perf_counter()
        cached_onnx(path)
        print(f"{net}: export {time.perf_counter() - tick:.0f} s", flush=True)
        spec = Segmenter.from_checkpoint(path).spec
        tick = time.perf_counter()
        _int8(net, path, spec, args.work, args.mixed_fp32)
        print(f"{net}: int8 quantization {time.perf_counter() - tick:.0f} s", flush=True)
        for threads in args.threads:
            _speed_table(args, net, spec, threads)


def _speed_table(args, net: str, spec, threads: int) -> None:
    height, width = NETS[net][2]
    print(f"\n{NETS[net][0]} {height} x {width}, {threads} thread(s); load before: {_load()}")
    print(f"{'engine':20} {'median':>9} {'img/s':>7} {'vs torch':>8} {'peak MiB':>8} {'ready s':>7}")
    results = {}
    for row in args.rows:
        if row.endswith("openvino") and not installed("openvino"):
            print(f"{row:20} not installed")
            continue
        median, count, peak, ready = in_fresh_process(
            _measure, row, net, args.work, threads, args.mixed_fp32
        )
        results[row] = median
        base = results.get("torch", median)
        print(f"{row:20} {1000 * median:7.1f}ms {1 / median:7.2f} {base / median:7.2f}x "
              f"{peak:8.0f} {ready:7.1f}   ({count} calls)", flush=True)  # fmt: skip
    fp32 = {row: t for row, t in results.items() if not row.startswith(("int8", "torch comp"))}
    auto = choose_engine("auto", spec)
    if fp32 and auto in fp32:
        fastest = min(fp32, key=fp32.get)
        print(f"auto picks {auto}: {fp32[fastest] / fp32[auto]:.2f} of the fastest fp32 "
              f"({fastest}); load after: {_load()}")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Accuracy on CamVid val


def _mean_iu(segmenter: Segmenter, dataset, spec) -> tuple[float, float]:
    """Mean IU over ``dataset`` and the median seconds per image."""
    from fcnseg.metrics import MultiTaskConfusion
    from fcnseg.quantize import labelled_samples
    from fcnseg.scoring import task_metrics

    confusion = MultiTaskConfusion(spec.task_classes, 255)
    times = []
    for batch, targets in labelled_samples(dataset, spec):
        tick = time.perf_counter()
        scores = segmenter.scores(batch)
        times.append(time.perf_counter() - tick)
        confusion.update({task: s.argmax(1) for task, s in scores.items()}, targets)
    return task_metrics(confusion)["semantic"]["mean_iu"], statistics.median(times)


def accuracy(args: argparse.Namespace) -> None:
    from fcnseg.data import build_dataset, eval_transforms
    from fcnseg.modelfile import read_record
    from fcnseg.quantize import CalibrationImages, compare, labelled_samples, quantize_onnx
    from fcnseg.tta import TTA

    torch.set_num_threads(args.threads[0])
    record = read_record(args.camvid)
    model = record.build()
    data = {split: build_dataset("camvid", root=args.root, split=split,
                                 transforms=eval_transforms(model.normalization))
            for split in ("train", "val")}  # fmt: skip
    fp32 = cached_onnx(args.camvid, record)
    engine = choose_engine("auto", None)
    print(f"\nCamVid val ({len(data['val'])} images), {args.camvid}, {args.threads[0]} thread(s), "
          f"TTA on {engine}; load: {_load()}")  # fmt: skip
    fp32_model = onnx_module("onnxruntime", fp32, record.spec, args.threads[0])

    for method, keep_head in args.int8:
        out = args.work / f"camvid-{method}-{'fp32head' if keep_head else 'int8head'}.int8.onnx"
        tick = time.perf_counter()
        images = CalibrationImages(data["train"], record.spec, 200)
        quantize_onnx(fp32, out, images, keep_head=keep_head, method=method)
        took = time.perf_counter() - tick
        int8_model = onnx_module("onnxruntime", out, record.spec, args.threads[0])
        result = compare(fp32_model, int8_model,
                         labelled_samples(data["val"], record.spec), record.spec, 255)  # fmt: skip
        head = "head fp32" if keep_head else "head int8"
        print(f"int8 {method}, {head} (200 images, {took:.0f} s): " + "; ".join(result.lines()),
              flush=True)  # fmt: skip
    if args.fp32_activations:
        mixed(args, record, data, fp32, fp32_model)
    if args.no_tta:
        return
    for tta in (None, TTA.of([1.0], flip=True), TTA.of([0.75, 1.0, 1.25], flip=True)):
        segmenter = Segmenter.from_onnx(fp32, engine=engine, threads=args.threads[0], tta=tta)
        mean_iu, seconds = _mean_iu(segmenter, data["val"], record.spec)
        name = "none" if tta is None else f"scales {list(tta.scales)} + flip"
        print(f"TTA {name:28} mean IU {100 * mean_iu:.2f}  {1000 * seconds:.0f} ms/image", flush=True)


def mixed(args: argparse.Namespace, record, data, fp32: Path, fp32_model) -> None:
    """int8 (MinMax, head fp32) with the N activations it rounds worst kept fp32, per N."""
    from fcnseg.quantize import (
        CalibrationImages,
        compare,
        keep_fp32,
        labelled_samples,
        quantize_onnx,
        sensitive_activations,
    )

    threads, spec = args.threads[0], record.spec
    images = CalibrationImages(data["train"], spec, args.calibration_images)
    first = args.work / "camvid-mixed-0.int8.onnx"
    quantize_onnx(fp32, first, images)
    ranked = sensitive_activations(fp32, first, images)
    worst = ", ".join(f"{name} {ratio:.1f} dB" for name, ratio in ranked[: max(args.fp32_activations)])  # fmt: skip
    print(f"activations int8 rounds worst (of {len(ranked)}): {worst}", flush=True)
    sample = next(labelled_samples(data["val"], spec))[0]
    torch_ms = _latency(Segmenter.from_checkpoint(args.camvid, engine="torch", threads=threads), sample)  # fmt: skip
    openvino_ms = _latency(Segmenter.from_onnx(fp32, engine="openvino", threads=threads), sample)
    print(f"fp32: torch eager {torch_ms:.0f} ms/image, OpenVINO {openvino_ms:.0f} ms/image")
    for count in args.fp32_activations:
        out = args.work / f"camvid-mixed-{count}.int8.onnx"
        if count:
            shutil.copyfile(first, out)
            keep_fp32(out, fp32, [name for name, _ in ranked[:count]])
        int8_model = onnx_module("onnxruntime", out, spec, threads)
        result = compare(fp32_model, int8_model, labelled_samples(data["val"], spec), spec, 255)
        ms = _latency(Segmenter.from_onnx(out, engine="openvino", threads=threads), sample)
        print(f"int8, {count:2d} activations fp32: " + "; ".join(result.lines()) + f"; OpenVINO "
              f"{ms:.0f} ms/image ({torch_ms / ms:.2f}x torch, {openvino_ms / ms:.2f}x OpenVINO fp32)",
              flush=True)  # fmt: skip


def _latency(segmenter: Segmenter, batch, runs: int = 15) -> float:
    """Median milliseconds of ``segmenter.scores(batch)`` after two warm-up calls."""
    times = []
    for index in range(runs + 2):
        tick = time.perf_counter()
        segmenter.scores(batch)
        if index >= 2:
            times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times)


def _machine() -> str:
    return f"{cpu_name()}; {torch.__version__}; load {_load()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("speed", "accuracy"))
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--camvid", type=Path, help="a CamVid-trained FCN-8s Lite0 checkpoint")
    parser.add_argument("--root", type=Path, help="the CamVid folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fcnseg-engines"))
    parser.add_argument("--calibrations", nargs="*", default=["minmax"],
                        help="int8 rows with the head fp32 and int8 (none: skip them)")  # fmt: skip
    parser.add_argument("--fp32-activations", nargs="+", type=int, default=[], metavar="N",
                        help="mixed-precision rows: the N activations int8 rounds worst fp32")  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=200, metavar="N",
                        help="training images the mixed-precision rows calibrate on")  # fmt: skip
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA rows")
    parser.add_argument("--mixed-fp32", type=int, default=4, metavar="N",
                        help="the speed row 'int8 mixed openvino': N activations kept fp32")  # fmt: skip
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.int8 = [(m, keep) for m in args.calibrations for keep in (True, False)]
    print(_machine())
    if args.only != "accuracy":
        speed(args)
    if args.only != "speed" and args.camvid is not None:
        accuracy(args)


if __name__ == "__main__":
    main()
