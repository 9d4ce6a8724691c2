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

from ..serving import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Service, create_app, missing_extra
from ..serving import server as http
from .options import add_model_file, add_segmenter, check_segmenter, positive, segmenter_of


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
    add_segmenter(parser)
    parser.add_argument(
        "--max-batch",
        type=positive("images"),
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
        type=positive("pixels"),
        default=DEFAULT_MAX_PIXELS,
        help=f"larger images are refused with 413 (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--max-bytes",
        type=positive("bytes"),
        default=DEFAULT_MAX_BYTES,
        help=f"larger request bodies are refused with 413 (default {DEFAULT_MAX_BYTES:,})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    missing = missing_extra()
    if missing:
        raise ValueError(missing)
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms {args.max_wait_ms:g}: give 0 or more milliseconds")
    check_segmenter(args)
    sock = http.bind(args.host, args.port)  # a port in use fails before the model loads
    segmenter = segmenter_of(args)
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
