"""Fine-tuning a zoo model onto a user's own classes against starting from ImageNet.

Makes a 3-class folder dataset (road, car, other; CamVid's Unlabelled ignored) from CamVid
frames shrunk to --size: --train-frames training frames in images/train, --val-frames val
frames in images/val. Then trains the entry's model on it twice with the same seed, steps
and recipe: from the zoo entry (``init_from=<entry>``: backbone and skips transfer, score
layers start anew) and from the ImageNet backbone (``pretrained_backbone=true``), and prints
the paper's four metrics of each on the val frames, with the difference.

    python benchmarks/zoo_finetune.py --root ../shared/data/camvid --steps 200

The run folders go to --output (keep them out of git).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.data import CAMVID_CLASSES

CLASSES = ("road", "car", "other")
MERGE = {"Road": 0, "Car": 1}  # every other CamVid class is "other"; Unlabelled is ignored


def make_dataset(root: Path, camvid: Path, args: argparse.Namespace) -> Path:
    """root/images/{train,val}, root/masks/{train,val}, root/classes.txt."""
    if root.exists():
        shutil.rmtree(root)
    table = np.full(256, 255, dtype=np.uint8)
    for index, name in enumerate(CAMVID_CLASSES):
        table[index] = MERGE.get(name, CLASSES.index("other"))
    for split, count in (("train", args.train_frames), ("val", args.val_frames)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for path in sorted((camvid / split).glob("*.png"))[:count]:
            image = Image.open(path).convert("RGB").resize(args.size, Image.BILINEAR)
            mask = Image.open(camvid / f"{split}annot" / path.name).resize(args.size, Image.NEAREST)
            image.save(root / "images" / split / path.name)
            Image.fromarray(table[np.asarray(mask)]).save(root / "masks" / split / path.name)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def train(data: Path, name: str, start: list[str], args: argparse.Namespace) -> dict:
    """One ``fcnseg train`` run; its last validation."""
    entry = args.entry
    model = entry.rsplit(".", 1)[0]
    command = [
        sys.executable, "-m", "fcnseg", "train", "--overwrite", f"root={data}", f"model={model}",
        f"max_iters={args.steps}", f"batch_size={args.batch_size}", f"crop_size={args.crop}",
        f"threads={args.threads}", "num_workers=1", "overlays=0", f"eval_every={args.steps}",
        f"output={args.output}", f"name={name}", *start,
    ]  # fmt: skip
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    log = args.output / name / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [record for record in records if record["event"] == "val"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--entry", default="fcn8s_efficientnet_lite0.camvid")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=176)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-frames", type=int, default=60)
    parser.add_argument("--val-frames", type=int, default=40)
    parser.add_argument("--size", type=int, nargs=2, default=(240, 180), metavar=("W", "H"))
    parser.add_argument("--output", type=Path, default=Path("runs/zoo-finetune"))
    args = parser.parse_args()
    data = make_dataset(args.output / "data", args.root, args)
    results = {
        "zoo": train(data, "from-zoo", [f"init_from={args.entry}"], args),
        "imagenet": train(data, "from-imagenet", ["pretrained_backbone=true"], args),
    }
    print(f"\n{args.steps} steps of {args.batch_size} x {args.crop}^2 crops, {args.train_frames} "
          f"training frames, {args.val_frames} val frames at {args.size[0]}x{args.size[1]}")  # fmt: skip
    print(f"{'start':10} {'pixel acc':>9} {'mean acc':>8} {'mean IU':>7} {'f.w. IU':>7}  IU " + " / ".join(CLASSES))  # fmt: skip
    for start, final in results.items():
        ius = " / ".join(f"{100 * value:.1f}" for value in final["iu"])
        print(f"{start:10} {100 * final['pixel_acc']:9.1f} {100 * final['mean_acc']:8.1f} "
              f"{100 * final['mean_iu']:7.1f} {100 * final['fw_iu']:7.1f}  {ius}")  # fmt: skip
    gain = results["zoo"]["mean_iu"] - results["imagenet"]["mean_iu"]
    print(f"mean IU: the zoo start {'+' if gain >= 0 else ''}{100 * gain:.1f} points")


if __name__ == "__main__":
    main()
