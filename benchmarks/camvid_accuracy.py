"""CamVid accuracy of FCN-32s, FCN-16s and FCN-8s on the ImageNet EfficientNet-Lite0 backbone.

Trains the three nets from one config (``configs/camvid.toml`` unless ``--config``) with
one budget (the same epochs or minutes, the same seed and data order), each in its own
``fcnseg train`` process, then prints the paper's four metrics and the per-class IU on val
from each run's log: the final evaluation, and the best one seen on the way. By default
the three run side by side with one thread and no loader worker each (on a small machine,
side-by-side one-thread runs get more from the cores than one run with many threads);
``--parallel 1`` runs them one after another with the config's threads and workers.

    python benchmarks/camvid_accuracy.py --root ../shared/data/camvid --epochs 20 --eval-every 2
    python benchmarks/camvid_accuracy.py --root ../shared/data/camvid \
        --config configs/camvid-2h.toml --budget-minutes 30 --parallel 1 --output runs/cmp30
    python benchmarks/camvid_accuracy.py --report-only --output runs/camvid   # finished runs

Checkpoints stay in ``--output`` (keep them out of git).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fcnseg.data import CAMVID_CLASSES

VARIANTS = ("32s", "16s", "8s")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "camvid.toml"


def run_name(variant: str) -> str:
    return f"camvid-fcn{variant}-lite0"


def _command(args: argparse.Namespace, variant: str) -> list[str]:
    """The ``fcnseg train`` command of one net: the config, and only the options given."""
    side_by_side = args.parallel > 1
    overrides = {
        "root": args.root,
        "model": f"fcn{variant}_efficientnet_lite0",
        "epochs": args.epochs,
        "eval_every": args.eval_every,
        "num_workers": 0 if side_by_side else None,
        "threads": args.threads or (1 if side_by_side else None),
        "time_limit_minutes": args.time_limit or None,
        "time_budget_minutes": args.budget_minutes,
        "output": args.output,
        "name": run_name(variant),
    }
    pairs = [f"{key}={value}" for key, value in overrides.items() if value is not None]
    return [sys.executable, "-m", "fcnseg", "train", "--config", str(args.config), *pairs]


def train_all(args: argparse.Namespace) -> None:
    """Start the runs ``--parallel`` at a time; wait for all; fail if one failed."""
    Path(args.output).mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(args.variants), [], []
    while pending or running:
        while pending and len(running) < args.parallel:
            variant = pending.pop(0)
            log = open(Path(args.output) / f"fcn{variant}.out", "w")
            command = _command(args, variant)
            print(" ".join(command[1:]), flush=True)
            running.append((variant, subprocess.Popen(command, stdout=log, stderr=log), log))
        variant, process, log = running.pop(0)
        if process.wait() != 0:
            failed.append(variant)
        log.close()
    if failed:
        names = ", ".join(str(Path(args.output) / f"fcn{v}.out") for v in failed)
        raise SystemExit(f"FCN-{'/'.join(failed)} failed: see {names}")


def _evaluations(folder: Path) -> list[dict]:
    log = folder / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"{log}: no such run log: train first (drop --report-only)")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [record for record in records if record["event"] == "val"]


def report(output: Path) -> None:
    print(f"{'net':8} {'iters':>6} {'pixel acc':>9} {'mean acc':>8} {'mean IU':>7} "
          f"{'f.w. IU':>7} {'best mIU':>8}")  # fmt: skip
    per_class = {}
    for variant in VARIANTS:
        evaluations = _evaluations(output / run_name(variant))
        final = evaluations[-1]
        best = max(record["mean_iu"] for record in evaluations)
        per_class[variant] = final["iu"]
        print(f"FCN-{variant:4} {final['iteration']:6d} {100 * final['pixel_acc']:9.1f} "
              f"{100 * final['mean_acc']:8.1f} {100 * final['mean_iu']:7.1f} "
              f"{100 * final['fw_iu']:7.1f} {100 * best:8.1f}")  # fmt: skip
    print()
    print(f"{'class IU':12}" + "".join(f"{'FCN-' + v:>9}" for v in VARIANTS))
    for index, name in enumerate(CAMVID_CLASSES):
        print(f"{name:12}" + "".join(f"{100 * per_class[v][index]:9.1f}" for v in VARIANTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/CamVid", help="CamVid in the SegNet layout")
    parser.add_argument("--output", default="runs/camvid", help="run folders go here")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the recipe of all three")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the config's)")
    parser.add_argument("--eval-every", type=int, help="epochs between evaluations (config's)")
    parser.add_argument("--threads", type=int, help="threads per run (side by side: 1)")
    parser.add_argument("--parallel", type=int, default=3, help="runs at once")
    parser.add_argument("--time-limit", type=float, default=0.0, help="minutes per run (0: none)")
    parser.add_argument("--budget-minutes", type=float, help="time budget of each run's schedule")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="the nets to train (the report reads all three)")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="print the finished runs")
    args = parser.parse_args()
    if not args.report_only:
        train_all(args)
    report(Path(args.output))


if __name__ == "__main__":
    main()
