"""``fcnseg train``: train from a flat config file with ``key=value`` overrides.

fcnseg train --config configs/synthetic.toml epochs=3 lr=0.02
fcnseg train --resume runs/synthetic-20250101-120000
torchrun --nproc_per_node 2 -m fcnseg.cli train --config configs/camvid.toml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..engine.distributed import CollectiveTimeoutError
from ..engine.train import NonFiniteLossError, default_run_dir, train


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an FCN from a config file",
        description="Train an FCN. Settings come from --config (flat TOML or JSON), then "
        "from KEY=VALUE overrides; docs/training.md lists every key.",
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
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.config is None and args.resume is None:
        raise ConfigError("fcnseg train needs --config FILE (or --resume RUN_DIR)")
    config_path = args.config
    if config_path is None:
        config_path = args.resume / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"{args.resume} holds no config.json: is it a run folder?")
    config = load_config(config_path, args.overrides)
    if args.resume is not None:
        run_dir = args.resume
    elif args.run_dir is not None:
        run_dir = args.run_dir
    else:
        run_dir = default_run_dir(config, stem=config_path.stem)
    try:
        result = train(config, run_dir, resume=args.resume is not None)
    except (NonFiniteLossError, CollectiveTimeoutError) as error:
        print(f"fcnseg: error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 speaks for all
    best = result.best_mean_iu
    print(
        f"{result.stopped} after {result.iterations} iterations; best mean IU "
        f"{100 * best:.1f}; run folder {result.run_dir}"
    )
    return 0
