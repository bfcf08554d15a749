"""How brainbot's servers (``brainbot serve``, ``brainbot kv serve``) meet the network:
uvicorn, with the limits it lacks added.

* **Header deadline.** uvicorn waits for a request's headers for ever (its keep-alive timer
  starts only after a response), so 200 clients sending headers a byte at a time held 200
  connections open indefinitely. :class:`GuardedH11Protocol` closes a connection whose
  request line and headers are not complete ``header_timeout`` seconds after it opened (or
  after its previous response).
* **Answers before the body.** A request refused on its headers (401, 413, uvicorn's own
  400 for headers over 16 KiB or broken chunked framing) is answered before its body is
  read. That answer carries ``Connection: close`` (so no client sends
  its next request down a connection about to close), and the connection is closed
  gracefully: write side shut first (FIN after the answer), the rest of the body read and
  dropped for at most ``LINGER`` seconds, then closed. Closing at once with body bytes
  unread makes the kernel send a reset, which destroyed the answer on its way to a client
  still uploading (17 times in 20 with an 8 MB body) and, on a busy machine, reset the
  next request of a client reusing the connection. uvicorn alone would read such a body to
  its end, however slowly it came.
* **Body deadline.** ``brainbot serve``'s app reads bodies within ``BRAINBOT_BODY_TIMEOUT``
  (408); ``kv serve`` takes uploads of up to 100 MB at the client's pace, within
  ``max_connections``.
* **Concurrency.** uvicorn's ``limit_concurrency``: beyond ``max_connections`` connections
  or requests at once, new requests get 503 at once instead of queueing.
* **Out of file descriptors.** When ``accept()`` fails with EMFILE/ENFILE, asyncio stops
  accepting for a second and retries (its own back-off); the error it reports each time is
  logged at most once per 10 s with a count, so the log cannot grow by megabytes a second
  while the process is out of descriptors. uvicorn's warning for each malformed request
  (400) and each refused connection (503) is thinned the same way (:class:`Sparse`): one
  client wrote 98 KB of log a second, and a full log pipe blocked the event loop.
* **Smuggling.** A request with both ``Content-Length`` and ``Transfer-Encoding`` is
  answered and its connection closed (RFC 9112 section 6.1): nothing after it is read as
  another request.
* **Half-closed clients.** A client that shuts its write side after a whole request
  (``nc -N``; HTTP/1.1, HTTP/1.0 or ``Connection: close``) still gets its answer; uvicorn
  closed at the client's EOF and lost it 12 to 15 times in 50.
* **Late answers.** Once a connection lingers, what the app still writes (a 408 whose
  deadline fired meanwhile) is dropped: it came after the write side was shut.
* **Shutdown.** On SIGTERM a connection still uploading a request nobody has answered is
  closed (gracefully, as above) instead of being waited for up to the body deadline.
* **Hosts.** ``brainbot serve`` answers only its configured host names (``HostCheck`` in
  its app).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from brainbot import serving

log = logging.getLogger("brainbot.serving")
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_CLOSE = (b"connection", b"close")
LINGER = 2.0  # seconds a closing connection reads and drops what its client still sends


class LingeringTransport:
    """The connection's transport, whose ``close()`` waits for the client when it may
    still be sending: shut the write side (the answer, then FIN, reach the client) and
    close once the client closes too or after ``LINGER`` seconds, whichever comes first.
    Everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, still_sending: Callable[[], bool]):
        self._transport = transport
        self._still_sending = still_sending
        self._timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.lingering:  # after write_eof: an answer too late for this connection
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        if not self.lingering:
            self._transport.writelines(lines)

    def close(self) -> None:
        if self.is_closing():
            return
        if not (self._still_sending() and self._transport.can_write_eof()):
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # after what is buffered: the answer is not lost
        self._transport.resume_reading()  # flow control may have paused it
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(LINGER, self.abort_lingering)

    def abort_lingering(self) -> None:
        self.cancel_timer()
        self._transport.close()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the guards above: header deadline, answers before
    the body, smuggling, half-closed clients, shutdown."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._linger = LingeringTransport(transport, self._client_still_sending)
        super().connection_made(self._linger)  # type: ignore[arg-type]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _client_still_sending(self) -> bool:
        # ERROR: uvicorn's own 400 (bad framing, headers over 16 KiB) while bytes still come
        return self.conn.their_state in (h11.SEND_BODY, h11.ERROR)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            assert self._header_deadline is not None
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()  # headers never finished: nothing to answer

    def data_received(self, data: bytes) -> None:
        if self._linger.lingering:
            return  # the rest of a body nobody reads: dropped
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        if self._linger.lingering:
            self._linger.abort_lingering()  # the client is done too: nothing to reset
            return None
        cycle = self.cycle
        # the request arrived whole (MUST_CLOSE: HTTP/1.0, or it said Connection: close)
        whole = self.conn.their_state in (h11.DONE, h11.MUST_CLOSE)
        if cycle is not None and not cycle.response_complete and whole:
            cycle.keep_alive = False  # a half-closed client: answer it, then close
            return True  # keep the write side open
        return None

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request line and headers arrived
            self._disarm()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # a new request
            names = {name for name, _ in self.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                cycle.keep_alive = False  # RFC 9112 section 6.1: close after answering
            cycle.send = self._closing_if_unread(cycle, cycle.send)  # type: ignore[method-assign,assignment]

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and self._client_still_sending():
            self.transport.close()  # still uploading: no work started, none to wait for
            return
        super().shutdown()

    def _closing_if_unread(self, cycle: Any, send: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``send`` adding ``Connection: close`` to an answer that starts before the
        request's body has arrived whole: the connection closes after it (uvicorn closes
        a connection h11 marks MUST_CLOSE; the close lingers, see above)."""

        async def send_closing(message: Any) -> None:
            closing = self._client_still_sending() or not cycle.keep_alive
            if message["type"] == "http.response.start" and closing:
                headers = list(message.get("headers", []))
                if _CLOSE not in headers:
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        return send_closing

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._linger.cancel_timer()
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})


class Sparse:
    """At most one report per kind of event every ``every`` seconds: what anyone can
    trigger at will must not grow the log by megabytes a second (or block the loop on a
    full log pipe)."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self._clock = clock
        self._last: dict[object, float] = {}
        self._dropped: dict[object, int] = {}

    def due(self, kind: object) -> int | None:
        """How many of ``kind`` were dropped since its last report, if one is due now;
        None (and one more dropped) if not."""
        now = self._clock()
        if now - self._last.get(kind, -float("inf")) < self.every:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._dropped.pop(kind, 0)


class QuietRefusals(logging.Filter):
    """uvicorn's WARNING for each refused request (malformed: 400; over the connection
    limit: 503), let through sparsely with how many were dropped."""

    MESSAGES = ("Invalid HTTP request received.", "Exceeded concurrency limit.")

    def __init__(self, sparse: Sparse | None = None):
        super().__init__()
        self.sparse = sparse or Sparse()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.MESSAGES:
            return True
        dropped = self.sparse.due(record.msg)
        if dropped is None:
            return False
        record.msg = f"{record.msg} ({dropped} more since the last report)"
        return True


class QuietAcceptErrors:
    """A loop exception handler that logs running out of descriptors sparsely (with how
    many times it happened), everything else as usual."""

    def __init__(self, sparse: Sparse | None = None):
        self.sparse = sparse or Sparse()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS:
            dropped = self.sparse.due("accept")
            if dropped is not None:
                log.error(
                    "out of file descriptors (%s): not accepting for a second; %d more since "
                    "the last report",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    dropped,
                )
            return
        loop.default_exception_handler(context)


async def serve(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout: float = 10.0,
    max_connections: int = 1000,
    keep_alive: int = 5,
    forwarded_allow_ips: list[str] | None = None,
    announce: Callable[[str], None] | None = None,
    path: str = "",
    backlog: int = 1024,
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> None:
    """Run ``app`` until cancelled or signalled; announce ``READY http://host:port<path>``."""
    asyncio.get_running_loop().set_exception_handler(QuietAcceptErrors())
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        http=guarded_protocol(header_timeout),
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive,
        # the client address is the peer's, unless a trusted proxy says (docs/security.md)
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
        server_header=False,
    )
    logging.getLogger("uvicorn.error").addFilter(QuietRefusals())  # after uvicorn's dictConfig
    await serving.run(config, host=host, port=port, path=path, backlog=backlog, announce=announce)
