"""What a run leaves besides checkpoints: the JSONL log and the end-of-run report.

``log.jsonl`` holds one JSON object per line; ``event`` says which kind:

    start / resume   iteration, world_size, device
    train            epoch, iteration, loss (mean over the logging window and the ranks),
                     lr (of the weights group, for the step taken), images_per_s (all
                     ranks), threads, time (seconds since this session started)
    val              epoch, iteration, pixel_acc, mean_acc, mean_iu, fw_iu, iu, acc; for a
                     multi-task model the first task's four numbers and one dict of metrics
                     per task ("semantic", "geometric")
    stopped          reason, iteration (NaN or infinite loss)

``write_report`` adds metrics.json, curves.png, confusion.png and overlays/.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import viz
from ..data.palettes import voc_palette
from ..metrics import json_safe
from .checkpoint import load_checkpoint

__all__ = ["RunLog", "write_report"]


class RunLog:
    """Append-only JSON lines, written by rank 0 only (``enabled``)."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(json_safe(record)) + "\n")

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
        """Drop train/val lines past ``iteration``: a resumed run repeats those steps and
        logs them again, so every step appears once."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            json.dumps(record)
            for record in self.records()
            if record.get("event") not in ("train", "val") or record["iteration"] <= iteration
        ]
        self.path.write_text("".join(line + "\n" for line in kept))


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
    summary = {"classes": list(classes), **summary, "best": best.metrics if best else None}
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    viz.plot_curves(log.records(), run_dir / "curves.png")
    if best is None or not best.confusion:
        return
    task, confusion = next(iter(best.confusion.items()))  # the first task's (``classes``)
    viz.plot_confusion(confusion, classes, run_dir / "confusion.png")
    if overlays:
        palette = best.palette.get(task) or voc_palette(len(classes))
        predictor = _Predictor(best.build().to(device).eval(), palette)
        viz.save_overlays(predictor, val_set, run_dir / "overlays", count=overlays)


class _Predictor:
    """Label maps of a single-input, single-task model for the report's overlays."""

    def __init__(self, model: torch.nn.Module, palette: list) -> None:
        self.model, self.palette = model, palette

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image).permute(2, 0, 1).float()
        x = self.model.normalization(x)[None].to(next(self.model.parameters()).device)
        return self.model(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
