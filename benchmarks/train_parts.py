"""Where a real training step's time goes (issue 31): the two-hour CamVid recipe run for a
few dozen steps by ``fcnseg train`` itself, its parts as log.jsonl records them.

Each train record of a run's log.jsonl holds ``step_parts``, the mean seconds per step in
``data`` (waiting for the loader), ``to_device``, ``forward`` (with the loss), ``backward``,
``sync`` (reading the loss), ``optimizer``, ``after_step`` (the moving average of the
weights) and ``log`` (the hooks after a step: log, console, time budget). This runs
``configs/camvid-2h.toml`` for ``--steps`` steps with no validation and prints the parts of
the steps after the first ``--log-every`` (warm-up), as seconds and shares of the step.

    python benchmarks/train_parts.py                   # 40 steps, about 1 minute on 2 cores
    python benchmarks/train_parts.py --set num_workers=0 --set ema_decay=0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _machine import cpu_name

from fcnseg.cli import main as fcnseg

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
PARTS = ("data", "to_device", "forward", "backward", "sync", "optimizer", "after_step", "log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--root", type=Path, default=CAMVID)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as output:
        overrides = [
            f"root={args.root}", f"output={output}", "name=parts", f"max_iters={args.steps}",
            "time_budget_minutes=0", f"log_every={args.log_every}", "eval_every=1000",
            "overlays=0", "checkpoint_every=0", *args.set,
        ]  # fmt: skip
        status = fcnseg(["train", "--config", str(ROOT / "configs" / "camvid-2h.toml"), *overrides])
        if status != 0:
            raise SystemExit(f"fcnseg train failed ({status})")
        records = [json.loads(line) for line in (Path(output) / "parts" / "log.jsonl").open()]
    timed = [r for r in records if r.get("event") == "train"][1:]  # the first window warms up
    parts = {part: sum(r["step_parts"].get(part, 0.0) for r in timed) / len(timed) for part in PARTS}  # fmt: skip
    step = sum(parts.values())
    rate = sum(r["images_per_s"] for r in timed) / len(timed)
    print(f"\nconfigs/camvid-2h.toml {' '.join(args.set)}; {cpu_name()}")
    print(f"mean of {len(timed) * args.log_every} steps: {step * 1000:.0f} ms a step, {rate:.2f} images/s")  # fmt: skip
    for part, seconds in parts.items():
        print(f"  {part:<11} {seconds * 1000:8.1f} ms  {100 * seconds / step:5.1f} %")


if __name__ == "__main__":
    main()
