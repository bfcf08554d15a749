"""Rate limits per identity and per client address, with the ``limits`` library.

What is counted, and where (every bucket a moving window; over it: 429 with
``Retry-After``):

* ``failed`` per **address**: failed authentications (a bad identity token at login, a
  session id that is unknown). An address over it gets 429 before any token is checked
  or any session read from KV, so random bearer tokens cannot spend the KV budget; a
  user who authenticates is never charged here, so a flood from one address cannot lock
  out the others behind the same proxy.
* ``session`` per **identity**: logins.
* ``write`` per identity and ``write_address`` per address: turns, messages, new and
  deleted conversations.
* ``read`` per identity: history pages and conversation lists.

Addresses are the peer's (or, with ``BRAINBOT_FORWARDED_ALLOW_IPS``, what the trusted proxy
says); IPv6 addresses count by their /64, the block one subscriber usually holds. The
counters live in this process's memory: several instances each apply the limits on their
own (docs/security.md).

A session's identity is known only once its session is read from KV, so
:class:`KnownSessions` remembers whose each session id was: a request over its identity's
limit, or with a session found dead, is refused without reading the session again.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from brainbot.errors import ConfigError, Throttled

Bucket = Literal["failed", "session", "write", "write_address", "read"]
Kind = Literal["session", "write", "read"]


def _rate(text: str, name: str) -> RateLimitItem:
    try:
        item = parse(text)
    except ValueError:
        raise ConfigError(f"{name} must look like '10/minute' or '100 per hour'.") from None
    if item.amount < 1:  # "0/minute" would refuse every request, quietly
        raise ConfigError(f"{name} must allow at least one request (e.g. '10/minute').")
    return item


def address_key(host: str | None) -> str | None:
    """The unit an address is counted by: an IPv4 address, or an IPv6 /64."""
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Throttle:
    def __init__(
        self,
        *,
        sessions: str = "10/minute",
        failed_per_address: str = "30/minute",
        writes: str = "120/minute",
        writes_per_address: str = "600/minute",
        reads: str = "600/minute",
    ) -> None:
        self._limits: dict[Bucket, RateLimitItem] = {
            "session": _rate(sessions, "BRAINBOT_RATE_SESSIONS"),
            "failed": _rate(failed_per_address, "BRAINBOT_RATE_FAILED_AUTH_PER_ADDRESS"),
            "write": _rate(writes, "BRAINBOT_RATE_WRITES"),
            "write_address": _rate(writes_per_address, "BRAINBOT_RATE_WRITES_PER_ADDRESS"),
            "read": _rate(reads, "BRAINBOT_RATE_READS"),
        }
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def _refuse(self, bucket: Bucket, who: str) -> None:
        stats = await self._limiter.get_window_stats(self._limits[bucket], bucket, who)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise Throttled(f"too many requests ({bucket})", retry_after=wait)

    async def hit(self, bucket: Bucket, who: str | None) -> None:
        """Count one request in ``bucket`` for ``who``; ``Throttled`` if it is over."""
        if who is not None and not await self._limiter.hit(self._limits[bucket], bucket, who):
            await self._refuse(bucket, who)


DEAD: Final = ""
"""What :meth:`KnownSessions.owner` says of a session id found dead (an owner is never
empty)."""


class KnownSessions:
    """Whose each session id was when this process last read it (``DEAD``: none), so that
    a flood with one genuine id, live but over its identity's limits or logged out, is
    refused before it costs a KV read (it cost one per request, 429 or 401 alike).

    Ids are kept as digests, never as credentials; at most ``size`` of them, the least
    recently used forgotten first. A dead id is believed for ``dead_for`` seconds: on
    Cloudflare a session written at one location may take that long to show at another.
    A live one is always read again: a logout elsewhere is seen as soon as KV shows it."""

    def __init__(
        self,
        size: int = 10_000,
        dead_for: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.dead_for = dead_for
        self._clock = clock
        self._owners: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"KnownSessions({len(self._owners)} of {self.size})"

    @staticmethod
    def _digest(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()[:16]

    def owner(self, session_id: str) -> str | None:
        """The identity ``session_id`` was last read for, ``DEAD``, or None (not known)."""
        digest = self._digest(session_id)
        known = self._owners.get(digest)
        if known is None:
            return None
        owner, at = known
        if owner == DEAD and self._clock() - at >= self.dead_for:
            del self._owners[digest]
            return None
        self._owners.move_to_end(digest)
        return owner

    def remember(self, session_id: str, owner: str) -> None:
        """``session_id`` was read just now: live for ``owner``, or ``DEAD``."""
        digest = self._digest(session_id)
        self._owners[digest] = (owner, self._clock())
        self._owners.move_to_end(digest)
        while len(self._owners) > self.size:
            self._owners.popitem(last=False)
