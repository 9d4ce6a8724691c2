"""The HTTP face of a ``Service``: a Starlette app, run by uvicorn (``fcnseg[serve]``).

    POST /v1/segment   the image as the body (image/*) or the multipart field ``image``;
                       ?overlay=1 for the overlay picture, ?task=NAME for a multi-task model,
                       Accept: application/json for the JSON answer
    GET  /healthz      model, engine, tasks and classes
    GET  /metrics      Prometheus text
    GET  /             a page to try the model in a browser

Bad input never takes the server down: every refusal is a 4xx whose JSON body is
``{"error": "<one sentence>"}``, and the next request is served. The image work runs on
Starlette's thread pool, the model on the service's one thread, so the event loop only
moves bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from .batcher import Closed
from .service import Service
from .stats import CONTENT_TYPE
from .uploads import IMAGE_TYPES_HINT, Refused, check_content_type

__all__ = ["create_app", "missing_extra", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # request bodies: larger than any photo
SEGMENT = "/v1/segment"
_log = logging.getLogger("fcnseg.serve")
_ROUTES = {SEGMENT, "/healthz", "/metrics", "/"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def missing_extra() -> str | None:
    """Why the server cannot start here (its packages are not installed), or None."""
    try:
        import multipart  # noqa: F401  (python-multipart: Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        return (
            f"fcnseg serve needs {error.name}: pip install 'fcnseg[serve]' (starlette, uvicorn "
            "and python-multipart)"
        )
    return None


def create_app(service: Service, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """The Starlette app serving ``service``; closing the app (uvicorn's shutdown, after
    the requests in flight are answered) stops the service's model thread."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    page = files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    async def segment(request) -> Response:
        started = time.perf_counter()
        try:
            answer = await _segment(service, request, max_bytes)
        except Refused as refused:
            service.stats.error(refused.reason)
            service.stats.request(SEGMENT, refused.status)
            return JSONResponse({"error": refused.message}, refused.status)
        response = Response(answer.body, media_type=answer.media_type)
        service.stats.request(SEGMENT, 200, time.perf_counter() - started)
        return response

    async def health(request) -> Response:
        service.stats.request("/healthz", 200)
        return JSONResponse(service.health())

    async def metrics(request) -> Response:
        service.stats.request("/metrics", 200)
        return PlainTextResponse(service.stats.text(), media_type=CONTENT_TYPE)

    async def index(request) -> Response:
        service.stats.request("/", 200)
        return HTMLResponse(page)

    async def http_error(request, error: HTTPException) -> Response:
        route = request.url.path if request.url.path in _ROUTES else "other"
        service.stats.request(route, error.status_code)
        message = f"{request.method} {request.url.path}: {error.detail.lower()}"
        if error.status_code == 404:
            message += f"; the routes are POST {SEGMENT}, GET /healthz, GET /metrics, GET /"
        return JSONResponse({"error": message}, error.status_code)

    @asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        yield
        service.close()

    routes = [
        Route(SEGMENT, segment, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan
    )


async def _segment(service: Service, request, max_bytes: int):
    """The answer to one POST, or ``Refused``."""
    from starlette.concurrency import run_in_threadpool

    overlay = _flag(request.query_params.get("overlay", "0"), "overlay")
    task = request.query_params.get("task")
    as_json = "application/json" in request.headers.get("accept", "")
    data = await _image_bytes(request, max_bytes)
    try:
        return await run_in_threadpool(
            service.segment, data, task=task, overlay=overlay, as_json=as_json
        )
    except Refused:
        raise
    except Closed:
        raise Refused(503, "shutting_down", "the server is shutting down: retry") from None
    except MemoryError as error:
        raise Refused(413, "out_of_memory", f"the image does not fit in memory: {error}") from None
    except Exception as error:  # the model failed: answer, log, and serve the next request
        _log.exception("POST %s failed", SEGMENT)
        raise Refused(
            500, "model_failed", f"the model failed on this image ({type(error).__name__}: {error})"
        ) from None


def _flag(value: str, name: str) -> bool:
    value = value.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise Refused(400, "bad_query", f"?{name}={value} is not 1 or 0")


async def _image_bytes(request, max_bytes: int) -> bytes:
    """The image's bytes: the body itself, or the multipart field ``image``."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        return await _multipart_image(request, await _body(request, max_bytes))
    check_content_type(content_type)
    return await _body(request, max_bytes)


async def _body(request, max_bytes: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``max_bytes``; a client gone
    mid-upload is a ``Refused`` that nobody reads (counted in the metrics)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise Refused(400, "client_disconnected", "the client left mid-upload") from None
    return b"".join(chunks)


async def _multipart_image(request, body: bytes) -> bytes:
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise Refused(400, "bad_multipart", f"the multipart body cannot be read: {error}") from None
    field = form.get("image")
    try:
        if field is None or isinstance(field, str):
            found = ", ".join(sorted(form.keys())) or "no fields"
            raise Refused(
                400,
                "no_image_field",
                f"the multipart body has no file field 'image' (found: {found}): "
                f"{IMAGE_TYPES_HINT}",
            )
        check_content_type(field.content_type or "")
        return await field.read()
    finally:
        await form.close()


def _too_large(max_bytes: int) -> Refused:
    return Refused(
        413,
        "body_too_large",
        f"the body exceeds the server's limit of {max_bytes:,} bytes: send a smaller file, or "
        "start the server with a larger --max-bytes",
    )
