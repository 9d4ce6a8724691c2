"""Running the app: uvicorn on a socket bound here, so the banner names the real port
(``--port 0`` takes a free one).

uvicorn stops gracefully on SIGTERM and Ctrl-C: it stops accepting, answers the requests
in flight (up to ``grace`` seconds), then closes the app, which stops the model thread; the
command then ends with status 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

__all__ = ["bind", "run"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (IPv6 when the host is an IPv6 address);
    an address in use is one OSError that says so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio turns Nagle's algorithm off only on sockets that say TCP, and a
    # keep-alive client waited 40 ms more per request (delayed ACKs) on one that did not
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({error.strerror}): choose another --port, or "
            "stop the process that holds it"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(
    app,
    sock: socket.socket,
    *,
    access_log: bool = False,
    grace: float = 30.0,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or Ctrl-C. The socket listens already:
    clients that connect before uvicorn is up wait in its backlog."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=grace,
        lifespan="on",
    )
    with _stopping_quietly():
        uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def _stopping_quietly() -> Iterator[None]:
    """uvicorn raises the signal that stopped it again once its graceful shutdown is done
    (for programs that embed it); handlers that take it in silence let the command end
    normally, status 0, instead of dying by SIGTERM or raising KeyboardInterrupt. The
    previous handlers come back afterwards. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {stop: signal.signal(stop, lambda number, frame: None) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
