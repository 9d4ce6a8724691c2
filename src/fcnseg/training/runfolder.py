"""What a run leaves besides checkpoints: the JSONL log and the end-of-run report.

``log.jsonl`` holds one JSON object per line; ``event`` says which kind:

    start / resume   iteration, world_size, device
    train            epoch, iteration, loss (mean over the logging window and the ranks),
                     lr (of the weights group, for the step taken), images_per_s (all
                     ranks), threads, time (seconds since this session started),
                     step_parts (this rank's mean seconds per step in data, to_device,
                     forward, backward, sync, optimizer, after_step, log)
    val              epoch, iteration, pixel_acc, mean_acc, mean_iu, fw_iu, iu, acc; for a
                     multi-task model the first task's four numbers and one dict of metrics
                     per task ("semantic", "geometric")
    stopped          reason, iteration (NaN or infinite loss)

The train and val records also go, for tools that read tables or TensorBoard, to

    train.csv, val.csv   one row per record, the header once; lists and dicts spread into
                         columns named by path: iu/Sky (per class, by name), semantic/mean_iu
    tb/                  TensorBoard event files (scalars train/loss, val/mean_iu,
                         val/iu/Sky, ...; the step is the iteration), when the optional
                         tensorboard package is installed (pip install "fcnseg[tensorboard]")

Scores are fractions of 1 in every file (mean_iu 0.713); the console and report.md show
them in percent (71.3). metrics.json says so in its "units" field.

A resumed run truncates all of them at the checkpoint's iteration (TensorBoard is told to
purge the later steps), so every step appears once.

``write_report`` adds metrics.json, curves.png, confusion.png and overlays/. ``RunLogger`` is
the log as one hook of the training loop: the start, train and val records, and the report
at the end.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import viz
from ..data.palettes import voc_palette
from ..metrics import class_labels, json_safe
from ..modelfile import ModelRecord
from . import clock
from .checkpoint import load_checkpoint, writing
from .distributed import all_mean
from .hooks import Hook, StepInfo
from .state import Progress, Run

__all__ = ["RunLog", "RunLogger", "write_report", "RUN_FILES", "holds_run", "clear_run"]

# How the files of a run hold scores (the console shows percent)
SCORE_UNITS = "scores are fractions of 1 (mean_iu 0.713 is 71.3 %)"

# What a run writes into its folder (stage folders of a staged run hold the same)
RUN_FILES = (
    "config.json", "last.pt", "best.pt", "log.jsonl", "train.csv", "val.csv",
    "metrics.json", "curves.png", "confusion.png",
)  # fmt: skip
RUN_FOLDERS = ("overlays", "tb")
CHECKPOINTS = ("last.pt", "best.pt")


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run: a checkpoint of its own or of a stage. A folder whose
    run stopped before its first checkpoint (a full disk, a NaN loss) holds only logs and
    its config: running the command again starts that run anew there."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any((folder / name).exists() for name in CHECKPOINTS):
        return True
    return any(holds_run(stage) for stage in folder.glob("stage[0-9]-*"))


def clear_run(folder: Path) -> list[Path]:
    """Remove the files a run wrote into ``folder`` (and its stage folders), nothing else;
    the paths removed. For ``fcnseg train --overwrite``."""
    folder, removed = Path(folder), []
    for stage in folder.glob("stage[0-9]-*"):
        if stage.is_dir():
            removed += clear_run(stage)
    for name in RUN_FILES:
        if (folder / name).is_file():
            (folder / name).unlink()
            removed.append(folder / name)
    for name in RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
            removed.append(folder / name)
    return removed


Classes = Sequence[str] | Mapping[str, Sequence[str]]


class RunLog:
    """Append-only JSON lines, written by rank 0 only (``enabled``), with train/val records
    copied into CSV files and TensorBoard beside ``path``.

    ``classes`` (a run's class names, or a dict of them by task) name the per-class columns;
    without them the columns are numbered.
    """

    def __init__(self, path: Path, *, enabled: bool, classes: Classes | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.classes = classes
        self._headers: dict[str, list[str]] = {}  # train/val CSV columns, once read or written
        self._writer: Any = None  # a SummaryWriter, opened at the first train/val record
        self._tensorboard = True  # False once the package turned out to be missing
        self._purge_step: int | None = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json_safe(record)
        with writing(self.path, kept=False), self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        event = record.get("event")
        if event in ("train", "val"):
            values = flatten_record(record, self.classes)
            self._append_csv(event, values)
            self._add_scalars(event, values)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        return records

    def truncate_after(self, iteration: int) -> None:
        """Drop train/val lines and rows past ``iteration``: a resumed run repeats those
        steps and logs them again, so every step appears once."""
        if not self.enabled:
            return
        if self.path.is_file():
            kept = [
                json.dumps(record)
                for record in self.records()
                if record.get("event") not in ("train", "val") or record["iteration"] <= iteration
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        for event in ("train", "val"):
            self._truncate_csv(event, iteration)
        # TensorBoard keeps the old event files: a writer opened with purge_step hides every
        # step from there on that they hold
        self.close()
        self._purge_step = iteration + 1

    def close(self) -> None:
        """Close the TensorBoard writer (rows and lines are written as they come)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def csv_path(self, event: str) -> Path:
        return self.path.parent / f"{event}.csv"

    def _append_csv(self, event: str, values: dict[str, Any]) -> None:
        path = self.csv_path(event)
        header = self._headers.get(event) or _csv_header(path)
        new = not header
        if new:
            header = list(values)
        self._headers[event] = header
        with writing(path, kept=False), path.open("a", newline="") as file:
            # a key the first record lacked has no column: dropped, the header stays true
            writer = csv.DictWriter(file, header, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(values)

    def _truncate_csv(self, event: str, iteration: int) -> None:
        path = self.csv_path(event)
        if not path.is_file():
            return
        with path.open(newline="") as file:
            rows = list(csv.reader(file))
        if not rows or "iteration" not in rows[0]:
            return
        column = rows[0].index("iteration")
        kept = [row for row in rows[1:] if len(row) > column and _step(row[column]) <= iteration]
        with path.open("w", newline="") as file:
            csv.writer(file).writerows([rows[0], *kept])

    def _add_scalars(self, event: str, values: dict[str, Any]) -> None:
        writer = self._summary_writer()
        if writer is None:
            return
        step = values["iteration"]
        for key, value in values.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and key != "iteration":  # the step; None (NaN) has no point to draw
                writer.add_scalar(f"{event}/{key}", value, step)
        writer.flush()  # readable at once, and nothing lost to a kill

    def _summary_writer(self) -> Any:
        if self._writer is None and self._tensorboard:
            self._tensorboard = _tensorboard_installed()  # optional: CSV and JSON lines suffice
            if not self._tensorboard:
                return None
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:  # installed but broken: say so, once
                self._tensorboard = False
                print(f"note: no TensorBoard logs: {error}", file=sys.stderr)
                return None
            log_dir = self.path.parent / "tb"
            self._writer = SummaryWriter(str(log_dir), purge_step=self._purge_step)
            self._purge_step = None
        return self._writer


def flatten_record(record: Mapping[str, Any], classes: Classes | None = None) -> dict[str, Any]:
    """One flat row of a log record, ``event`` left out: nested dicts and lists become
    ``key/sub`` columns; a list of per-class values takes the class names when ``classes``
    (a sequence, or a dict of sequences by the key above) has one per value."""
    row: dict[str, Any] = {}

    def add(prefix: str, value: Any, names: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                sub = names.get(key) if isinstance(names, Mapping) else names
                add(f"{prefix}{key}/", item, sub)
        elif isinstance(value, list | tuple):
            named = isinstance(names, Sequence) and not isinstance(names, str | Mapping)
            labels = names if named and len(names) == len(value) else range(len(value))
            for label, item in zip(labels, value, strict=True):
                add(f"{prefix}{label}/", item, None)
        else:
            row[prefix[:-1]] = value

    add("", {k: v for k, v in record.items() if k != "event"}, classes)
    return row


def _tensorboard_installed() -> bool:
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


def _csv_header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return next(csv.reader(file), [])


def _step(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")  # a row cut short by a kill: dropped


def write_report(
    run_dir: Path,
    log: RunLog,
    *,
    classes: Sequence[str],
    val_set: Dataset,
    summary: dict[str, Any],
    overlays: int,
    device: torch.device,
) -> None:
    """metrics.json (``summary`` plus the best checkpoint's metrics), curves.png, and from
    best.pt: confusion.png and ``overlays`` validation images with their predictions."""
    best_path = run_dir / "best.pt"
    best = load_checkpoint(best_path) if best_path.is_file() else None
    summary = {
        "classes": list(classes),
        "units": SCORE_UNITS,
        **summary,
        "best": best.metrics if best else None,
    }
    with writing(run_dir / "metrics.json", kept=False):
        (run_dir / "metrics.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    with writing(run_dir / "curves.png", kept=False):
        viz.plot_curves(log.records(), run_dir / "curves.png")
    if best is None or not best.confusion:
        return
    task, confusion = next(iter(best.confusion.items()))  # the first task's (``classes``)
    with writing(run_dir / "confusion.png", kept=False):
        viz.plot_confusion(confusion, classes, run_dir / "confusion.png")
    if overlays:
        palette = best.palette.get(task) or voc_palette(len(classes))
        model = best.build().to(device).eval()
        predictor = _Predictor(model, palette, tuple(classes), best.ignore_index)
        viz.save_overlays(predictor, val_set, run_dir / "overlays", count=overlays)


class RunLogger(Hook):
    """The run's ``RunLog`` driven by the loop: a "start" (or "resume") record, a "train"
    record every ``log_every`` steps (the window's mean loss over the ranks), a "val" record
    per validation, and at the end the report (rank 0)."""

    def __init__(self) -> None:
        self.resumed = False

    def on_restore(self, run: Run, progress: Progress, record: ModelRecord) -> None:
        self.resumed = True

    def on_train_start(self, run: Run, progress: Progress) -> None:
        run.log.write(
            {
                "event": "resume" if self.resumed else "start",
                "iteration": progress.position.iteration,
                "world_size": run.context.world_size,
                "device": str(run.context.device),
            }
        )

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        position, window = progress.position, progress.window
        if position.iteration % run.config.log_every != 0:
            return None
        loss = all_mean(sum(window.losses) / max(len(window.losses), 1), run.context)
        run.log.write(
            {
                "event": "train",
                "epoch": position.epoch,
                "iteration": position.iteration,
                "loss": loss,
                "lr": info.lr,
                "images_per_s": window.rate(),
                "threads": torch.get_num_threads(),
                "time": round(clock.now() - run.started, 3),
                "step_parts": window.step_parts(),
            }
        )
        window.reset()
        return None

    def on_validation_end(self, run: Run, progress: Progress, metrics: dict) -> None:
        position = progress.position
        run.log.write(
            {"event": "val", "epoch": position.epoch, "iteration": position.iteration, **metrics}
        )

    def on_end(self, run: Run, progress: Progress, stopped: str) -> None:
        if not run.context.is_main:
            return
        spec, position = run.spec, progress.position
        simple = len(spec.inputs) == 1 and len(spec.tasks) == 1  # one RGB input, one task
        write_report(
            run.run_dir,
            run.log,
            classes=run.data.classes[spec.task_names[0]],
            val_set=run.data.val,
            summary={
                "iterations": position.iteration,
                "best_iteration": position.best_iteration,
                "last": progress.metrics,
                **progress.summary,
            },
            overlays=run.config.overlays if simple else 0,
            device=run.context.device,
        )
        run.log.close()


class _Predictor:
    """Label maps of a single-input, single-task model for the report's overlays."""

    def __init__(self, model: torch.nn.Module, palette: list, classes, ignore_index: int):
        self.model, self.palette = model, palette
        self.classes, self.ignore_index = classes, ignore_index

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image).permute(2, 0, 1).float()
        x = self.model.normalization(x)[None].to(next(self.model.parameters()).device)
        return class_labels(self.model(x))[0].cpu().numpy().astype(np.uint8)
