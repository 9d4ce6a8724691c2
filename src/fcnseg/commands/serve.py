"""``fcnseg serve``: a trained model behind HTTP, with a page to try it.

    fcnseg serve --pretrained fcn8s_efficientnet_lite0.camvid --port 8000
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/segment -o mask.png

``POST /v1/segment`` answers the index mask (the PNG ``fcnseg predict`` writes),
``?overlay=1`` the overlay, ``Accept: application/json`` the classes, their pixel counts
and the mask as base64; ``GET /`` is a page to drop a photo on, ``GET /healthz`` and ``GET
/metrics`` (Prometheus) are for the machines. Concurrent requests of one size run as one
batch (``--max-batch``, ``--max-wait-ms``). Needs ``pip install 'fcnseg[serve]'``;
docs/deploy.md has clients and replicas.
"""

from __future__ import annotations

import argparse
import sys

from ..devices import resolve_device
from ..inference import Segmenter
from ..serving import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Service, create_app, missing_extra
from ..serving import server as http
from .options import (
    add_engine,
    add_model_file,
    add_speed,
    add_threads,
    add_tiling,
    add_tta,
    apply_threads,
    check_engine,
    speed_of,
    tiling_of,
    tta_of,
    use_pretrained,
    warn_cpu_engine,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP",
        description="Answer POST /v1/segment with label maps; GET / is a page to try it.",
    )
    add_model_file(
        parser,
        help="a .pt from fcnseg train, or a .onnx from fcnseg export onnx or fcnseg quantize",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: every interface)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    add_engine(parser)
    add_threads(parser, auto=True)
    add_tta(parser)
    add_speed(parser)
    add_tiling(parser)
    parser.add_argument(
        "--max-batch",
        type=_at_least_one,
        help="concurrent images of one size run together, up to this many (default: 1 on a "
        "CPU, where batches measured slower per image; 8 on a GPU)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first image of a batch waits for others (default 5 ms)",
    )
    parser.add_argument(
        "--max-pixels",
        type=_at_least_one,
        default=DEFAULT_MAX_PIXELS,
        help=f"larger images are refused with 413 (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--max-bytes",
        type=_at_least_one,
        default=DEFAULT_MAX_BYTES,
        help=f"larger request bodies are refused with 413 (default {DEFAULT_MAX_BYTES:,})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.set_defaults(run=run)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value


def run(args: argparse.Namespace) -> int:
    missing = missing_extra()
    if missing:
        raise ValueError(missing)
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms {args.max_wait_ms:g}: give 0 or more milliseconds")
    use_pretrained(args, int8="file")
    check_engine(args)
    apply_threads(args)
    tiling = tiling_of(args)
    device = resolve_device(args.device)
    sock = http.bind(args.host, args.port)
    segmenter = Segmenter.from_checkpoint(
        args.checkpoint,
        device=device,
        tiling=tiling,
        tta=tta_of(args),
        engine=args.engine,
        threads=args.threads,
        speed=speed_of(args),
    )
    warn_cpu_engine(args, segmenter.engine, device)
    name = args.pretrained or str(args.checkpoint)
    service = Service(
        segmenter,
        name=name,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_pixels=args.max_pixels,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {name} ({segmenter.engine} engine) on http://{shown}:{port}/ : "
        f"POST /v1/segment, GET /healthz, GET /metrics; Ctrl-C or SIGTERM stops",
        flush=True,
    )
    http.run(create_app(service, max_bytes=args.max_bytes), sock, access_log=args.access_log)
    print("fcnseg serve: stopped", file=sys.stderr)
    return 0
