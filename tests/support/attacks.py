"""Connections that attack a server of ours (``brainbot serve``, ``brainbot kv serve``)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def slow_header_connections(url: str, n: int) -> list[socket.socket]:
    """``n`` connections, each with a request whose headers never end (slowloris)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    sockets = []
    for _ in range(n):
        s = socket.create_connection((parts.hostname, parts.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sockets.append(s)
    return sockets


def closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the server closed ``s`` within ``within`` seconds."""
    s.settimeout(within)
    try:
        return s.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
