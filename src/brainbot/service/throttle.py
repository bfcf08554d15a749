"""Rate limits per identity and per client address, with the ``limits`` library.

Two kinds of request are limited, each per identity and per client address: logins
(``POST /sessions``) and writes (turns, messages, new and deleted conversations). A request
over a limit is refused before it costs a KV request, with 429 and ``Retry-After``.

The counters live in this process's memory (``limits``' moving window): several instances
each apply the limits on their own, so an operator running N instances behind one address
gets up to N times the rate; a proxy in front should limit too (docs/security.md).
"""

from __future__ import annotations

import math
import time
from typing import Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from brainbot.errors import ConfigError, Throttled

Kind = Literal["session", "write"]


def _rate(text: str, name: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise ConfigError(f"{name} must look like '10/minute' or '100 per hour'.") from None


class Throttle:
    def __init__(
        self,
        *,
        sessions: str = "10/minute",
        sessions_per_address: str = "30/minute",
        writes: str = "120/minute",
        writes_per_address: str = "600/minute",
    ) -> None:
        self._limits: dict[tuple[Kind, str], RateLimitItem] = {
            ("session", "identity"): _rate(sessions, "BRAINBOT_RATE_SESSIONS"),
            ("session", "address"): _rate(
                sessions_per_address, "BRAINBOT_RATE_SESSIONS_PER_ADDRESS"
            ),
            ("write", "identity"): _rate(writes, "BRAINBOT_RATE_WRITES"),
            ("write", "address"): _rate(writes_per_address, "BRAINBOT_RATE_WRITES_PER_ADDRESS"),
        }
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, kind: Kind, *, identity: str | None, address: str | None) -> None:
        """Count one request of ``kind``; raise ``Throttled`` (with the seconds to wait) if
        it is over the identity's or the address's limit."""
        for who, value in (("address", address), ("identity", identity)):
            if value is None:
                continue
            item = self._limits[(kind, who)]
            if not await self._limiter.hit(item, kind, who, value):
                stats = await self._limiter.get_window_stats(item, kind, who, value)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise Throttled(f"too many {kind} requests from this {who}", retry_after=wait)
