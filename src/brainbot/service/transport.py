"""How ``brainbot serve`` meets the network: uvicorn, with the limits it lacks added.

* **Header deadline.** uvicorn waits for a request's headers for ever (its keep-alive timer
  starts only after a response), so 200 clients sending headers a byte at a time held 200
  connections open indefinitely. :class:`GuardedH11Protocol` closes a connection whose
  request line and headers are not complete ``header_timeout`` seconds after it opened (or
  after its previous response).
* **Answers before the body.** A request refused on its headers (401, 413) is answered
  before its body is read. That answer carries ``Connection: close`` (so no client sends
  its next request down a connection about to close), and the connection is closed
  gracefully: write side shut first (FIN after the answer), the rest of the body read and
  dropped for at most ``LINGER`` seconds, then closed. Closing at once with body bytes
  unread makes the kernel send a reset, which destroyed the answer on its way to a client
  still uploading (17 times in 20 with an 8 MB body) and, on a busy machine, reset the
  next request of a client reusing the connection. uvicorn alone would read such a body to
  its end, however slowly it came.
* **Body deadline.** The app reads bodies within ``BRAINBOT_BODY_TIMEOUT`` (408).
* **Concurrency.** uvicorn's ``limit_concurrency``: beyond ``max_connections`` connections
  or requests at once, new requests get 503 at once instead of queueing.
* **Out of file descriptors.** When ``accept()`` fails with EMFILE/ENFILE, asyncio stops
  accepting for a second and retries (its own back-off); the error it reports each time is
  logged at most once per ``log_every`` seconds with a count, so the log cannot grow by
  megabytes a second while the process is out of descriptors.
* **Hosts.** Only the configured host names are answered (``HostCheck`` in the app).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from brainbot import serving

log = logging.getLogger("brainbot.service")
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
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._linger = LingeringTransport(transport, self._client_still_sending)
        super().connection_made(self._linger)  # type: ignore[arg-type]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _client_still_sending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY

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

    def eof_received(self) -> None:
        if self._linger.lingering:
            self._linger.abort_lingering()  # the client is done too: nothing to reset

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request line and headers arrived
            self._disarm()
        if self.cycle is not None and self.cycle is not cycle:
            self.cycle.send = self._closing_if_unread(self.cycle.send)  # type: ignore[method-assign,assignment]

    def _closing_if_unread(self, send: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``send`` adding ``Connection: close`` to an answer that starts before the
        request's body has arrived whole: the connection closes after it (uvicorn closes
        a connection h11 marks MUST_CLOSE; the close lingers, see above)."""

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start" and self._client_still_sending():
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


class QuietAcceptErrors:
    """A loop exception handler that logs running out of descriptors once per
    ``log_every`` seconds (with how many times it happened), everything else as usual."""

    def __init__(self, log_every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.log_every = log_every
        self._clock = clock
        self._last = -float("inf")
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS:
            now = self._clock()
            if now - self._last < self.log_every:
                self.suppressed += 1
                return
            log.error(
                "out of file descriptors (%s): not accepting for a second; %d more since "
                "the last report",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                self.suppressed,
            )
            self._last, self.suppressed = now, 0
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
) -> None:
    """Run ``app`` until cancelled or signalled; announce ``READY http://host:port``."""
    asyncio.get_running_loop().set_exception_handler(QuietAcceptErrors())
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        http=guarded_protocol(header_timeout),
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive,
        # the client address is the peer's, unless a trusted proxy says (docs/security.md)
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
        server_header=False,
    )
    await serving.run(config, host=host, port=port, announce=announce)
