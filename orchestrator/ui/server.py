"""Serving the dashboard: the listening socket, and uvicorn run inside the caller's loop.

The socket is bound before the server starts, so a busy port is a plain error, port 0 means
"any free port" (the caller prints the real one), and the loopback check is made on the
address actually bound, not on a name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from starlette.types import ASGIApp

GRACEFUL_SECONDS = 5
"""After shutdown starts, how long open requests (a cancel waiting for its task) may finish."""


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host`` (a name or an address) and ``port``, listening.
    Raises OSError (``socket.gaierror`` for a host that does not resolve)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    return socket.create_server(address, family=family)


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller decides when to stop (uvicorn's own
    handlers would re-raise the signal after shutdown, and the process would die of it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: ASGIApp, sock: socket.socket, stopping: anyio.Event) -> None:
    """Serve ``app`` on ``sock`` until ``stopping`` is set, then shut down gracefully."""
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS)
    server = _Server(config)

    async def stop_when_asked() -> None:
        await stopping.wait()
        server.should_exit = True

    async with anyio.create_task_group() as group:
        group.start_soon(stop_when_asked)
        await server.serve(sockets=[sock])
        group.cancel_scope.cancel()
