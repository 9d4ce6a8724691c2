"""``fcnseg train``: train from a flat config file with ``key=value`` overrides, or from
overrides alone on a folder dataset (the defaults of ``FOLDER_DEFAULTS``).

fcnseg train root=data/my-photos epochs=20
fcnseg train --config configs/synthetic.toml epochs=3 lr=0.02
fcnseg train --resume runs/synthetic-20250101-120000
torchrun --nproc_per_node 2 -m fcnseg.cli train --config configs/camvid.toml
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path

from ..config import ConfigError, TrainConfig, load_config
from ..training.checkpoint import WriteError
from ..training.claim import claim_run
from ..training.distributed import CollectiveTimeoutError
from ..training.runfolder import clear_run, holds_run
from ..training.stages import NonFiniteLossError, default_run_dir, train

# Without --config: a folder dataset (images/, masks/, classes.txt) trained as most users
# want, from ImageNet weights with AdamW and 512-pixel crops (any image size fits a batch);
# every key may still be overridden, and config.json records them all.
FOLDER_DEFAULTS = (
    "dataset=folder",
    "pretrained_backbone=true",
    "optimizer=adamw",
    "crop_size=512",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an FCN on a folder of images and masks, or from a config file",
        description="Train an FCN. Settings come from --config (flat TOML or JSON), then "
        "from KEY=VALUE overrides; docs/training.md lists every key. Without --config it "
        "trains on a folder dataset: fcnseg train root=DIR (images/, masks/, classes.txt; "
        "defaults: " + " ".join(FOLDER_DEFAULTS) + "; a random 20 percent of the images validate "
        "when DIR has no val split).",
    )
    parser.add_argument("--config", type=Path, help="a .toml or .json config file")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last.pt (config from RUN_DIR/config.json "
        "unless --config is given)",
    )
    parser.add_argument("--run-dir", type=Path, help="the run folder (default: output/name)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a run folder that holds a run, replacing its checkpoints and "
        "logs (without it fcnseg train refuses such a folder)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config_path = args.config
    if config_path is None and args.resume is not None:
        config_path = args.resume / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"{args.resume} holds no config.json: is it a run folder?")
    if config_path is None:
        config = _without_config(args.overrides)
        stem = Path(config.root).name if config.root else config.dataset
    else:
        config = load_config(config_path, args.overrides)
        stem = config_path.stem
    if args.resume is not None:
        if args.overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: give one")
        run_dir = args.resume
    elif args.run_dir is not None:
        run_dir = args.run_dir
    else:
        run_dir = default_run_dir(config, stem=stem)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for all
    with claim_run(run_dir) if main else contextlib.nullcontext():
        if args.resume is None:
            _take_folder(run_dir, overwrite=args.overwrite, main=main)
        return _train(config, run_dir, resume=args.resume is not None, main=main)


def _take_folder(run_dir: Path, *, overwrite: bool, main: bool) -> None:
    """Refuse a folder that holds a run's checkpoints unless ``overwrite``. A folder whose
    run stopped before its first checkpoint holds no run: its leftover logs are cleared."""
    if holds_run(run_dir):
        if not overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run: continue it with fcnseg train --resume "
                f"{_quote(run_dir)}, or start it again with --overwrite (its checkpoints and "
                "logs are replaced)"
            )
        if main:
            clear_run(run_dir)
            print(f"--overwrite: removed the run in {run_dir}")
    elif main and clear_run(run_dir):
        print(f"{run_dir} held no checkpoint (its run stopped before the first): starting again")


def _train(config: TrainConfig, run_dir: Path, *, resume: bool, main: bool) -> int:
    """Train, then say how it ended; the exit status."""
    command = f"fcnseg train --resume {_quote(run_dir)}"
    try:
        result = train(config, run_dir, resume=resume)
    except NonFiniteLossError as error:
        print(f"fcnseg: error: {error}", file=sys.stderr)
        return 1
    except CollectiveTimeoutError as error:
        print(f"fcnseg: error: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # gloo's threads still wait on the silent rank: at a normal interpreter exit their
        # destructors can abort the process ("terminate called without an active
        # exception", status -6) after the line above. Everything this run wrote is closed.
        os._exit(1)
    except WriteError as error:
        print(f"fcnseg: error: {error}; make room, {_then(run_dir)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: the step was abandoned
        kept = "last.pt keeps the last saved step" if any(run_dir.rglob("last.pt")) else ""
        then = f"; resume: {command}" if kept else ""
        print(f"fcnseg: interrupted{': ' + kept if kept else ''}{then}", file=sys.stderr)
        return 130
    if not main:
        return 0
    if result.stopped == "interrupted":
        print(
            f"fcnseg: interrupted at step {result.iterations}: saved "
            f"{result.last_checkpoint}; resume: {command}",
            file=sys.stderr,
        )
        return 130
    best = result.best_mean_iu
    print(
        f"{result.stopped} after {result.iterations} steps; best mean IU "
        f"{100 * best:.1f}; run folder {result.run_dir}"
    )
    return 0


def _then(run_dir: Path) -> str:
    """What goes on from a run stopped by a failed write: resume from its last.pt; without
    one, the command again (with --overwrite when a best.pt must be replaced)."""
    if any(run_dir.rglob("last.pt")):
        return f"then resume: fcnseg train --resume {_quote(run_dir)}"
    if holds_run(run_dir):
        return "then run the command again with --overwrite (it replaces the best.pt kept)"
    return "then run the command again"


def _without_config(overrides: list[str]) -> TrainConfig:
    """The folder defaults, then the user's overrides; a folder dataset needs its root."""
    config = load_config(None, [*FOLDER_DEFAULTS, *overrides])
    if config.dataset == "folder" and config.root is None:
        raise ConfigError(
            "fcnseg train needs root=DIR, a folder with images/, masks/ and classes.txt (see "
            "README, Train on your own data), or --config FILE, or --resume RUN_DIR"
        )
    return config


def _quote(path: Path) -> str:
    return shlex.quote(str(path))
