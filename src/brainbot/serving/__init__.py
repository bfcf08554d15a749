"""Running an ASGI app under uvicorn on a socket of our own, announcing ``READY <url>``.

Shared by ``brainbot serve`` and ``brainbot kv serve``: binding the socket ourselves lets
port 0 pick a free port, and the one ``READY`` line on stdout is how scripts and tests
learn the address once the server accepts connections. ``transport`` adds the limits
uvicorn lacks (header deadline, answers before the body, concurrency, quiet logs).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

import uvicorn


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


async def run(
    config: uvicorn.Config,
    *,
    host: str,
    port: int,
    path: str = "",
    backlog: int = 1024,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled or signalled; announce ``READY http://host:port<path>``."""
    sock = listening_socket(host, port, backlog)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn offers no event for this
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    shown = f"[{host}]" if ":" in host else host
    line = f"READY http://{shown}:{sock.getsockname()[1]}{path}"
    if announce is not None:
        announce(line)
    else:
        print(line, flush=True)
        sys.stdout.flush()
    await task
