"""Faults the local KV API server can inject, so resilience is tested against real HTTP.

Each fault is something Cloudflare really does: 429s with ``Retry-After``, 5xx answers,
slow answers, bulk writes that report some keys unsuccessful, the account-wide request
budget with its lockout, and list results that lag behind writes (eventual consistency).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Faults:
    error_rate: float = 0.0
    """Share of requests answered with an error instead of being served."""
    error_429_share: float = 0.5
    """Of those errors, the share that are 429 (with ``Retry-After``); the rest are 5xx."""
    retry_after: float = 1.0
    """Seconds sent in ``Retry-After`` with an injected 429."""
    slow_rate: float = 0.0
    """Share of requests delayed by ``slow_seconds`` before being served."""
    slow_seconds: float = 0.0
    bulk_failure_rate: float = 0.0
    """Share of the keys of a bulk write reported in ``unsuccessful_keys`` (and not written)."""
    budget: int | None = None
    """Cloudflare-like budget: more than this many requests per ``budget_window`` locks the
    client out (429, code 971) until the window has passed."""
    budget_window: float = 300.0
    key_write_limit: bool = False
    """Cloudflare's 1 write per second per key: a second PUT/DELETE of one key within a
    second is answered 429 (code 10048, ``Retry-After: 1``)."""
    list_lag: float = 0.0
    """Seconds by which list results trail writes: new keys stay hidden, deleted ones linger."""
    bulk_latency: float = 0.0
    """Seconds added to every bulk request (write, delete, get): a far-away API, for
    measuring how well a client keeps several requests in flight."""
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "error_429_share", "slow_rate", "bulk_failure_rate"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {share}.")
        for name in ("retry_after", "slow_seconds", "budget_window", "list_lag", "bulk_latency"):
            seconds = getattr(self, name)
            if not math.isfinite(seconds) or seconds < 0:  # (NaN passed "< 0", inf slept for ever)
                raise ValueError(f"{name} must be a finite number of seconds, 0 or more.")
        if self.budget is not None and self.budget < 1:
            raise ValueError("budget must be at least 1.")

    @property
    def any(self) -> bool:
        return bool(
            self.error_rate
            or self.slow_rate
            or self.bulk_failure_rate
            or self.budget is not None
            or self.list_lag
            or self.key_write_limit
            or self.bulk_latency
        )


@dataclass
class FaultInjector:
    """Decides, request by request, which fault (if any) to inject."""

    faults: Faults
    clock: Callable[[], float] = time.monotonic
    _rng: random.Random = field(init=False)
    _seen: deque[float] = field(init=False, default_factory=deque)
    _locked_until: float = field(init=False, default=0.0)
    _last_write: dict[str, float] = field(init=False, default_factory=dict)
    budget_rejections: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.faults.seed)

    def over_budget(self) -> float | None:
        """Count this request; return the seconds of lockout left if it is over budget."""
        if self.faults.budget is None:
            return None
        now = self.clock()
        if now < self._locked_until:
            self.budget_rejections += 1
            return self._locked_until - now
        while self._seen and self._seen[0] <= now - self.faults.budget_window:
            self._seen.popleft()
        if len(self._seen) >= self.faults.budget:
            self._locked_until = now + self.faults.budget_window
            self._seen.clear()
            self.budget_rejections += 1
            return self.faults.budget_window
        self._seen.append(now)
        return None

    def error_status(self) -> int | None:
        if self._rng.random() >= self.faults.error_rate:
            return None
        if self._rng.random() < self.faults.error_429_share:
            return 429
        return self._rng.choice((500, 502, 503))

    def too_soon(self, key: str) -> bool:
        """Whether ``key`` was written less than a second ago (then this write is refused)."""
        if not self.faults.key_write_limit:
            return False
        now = self.clock()
        if now - self._last_write.get(key, -1.0) < 1.0:
            return True
        self._last_write[key] = now
        if len(self._last_write) > 100_000:
            self._last_write = {k: t for k, t in self._last_write.items() if now - t < 1.0}
        return False

    def delay(self) -> float:
        if self.faults.slow_rate and self._rng.random() < self.faults.slow_rate:
            return self.faults.slow_seconds
        return 0.0

    def failed_bulk_keys(self, keys: list[str]) -> set[str]:
        rate = self.faults.bulk_failure_rate
        if not rate:
            return set()
        return {k for k in keys if self._rng.random() < rate}
