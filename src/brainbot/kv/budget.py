"""Pacing to Cloudflare's API budget: at most N requests in any window of W seconds.

Cloudflare allows 1,200 API requests per 5 minutes per user; going over locks the whole
account out of the API for 5 minutes. Reacting to 429s is therefore too late: the client
waits *before* sending instead.

A slot is held from the moment a request starts until its answer arrives, and then
counts for a further full window. The server receives a request somewhere between those
two moments, so however requests are reordered in transit, the server never sees more
than N requests in any window either.

The budget is per process: processes sharing one token should split it (for example
``CLOUDFLARE_API_BUDGET=600`` each for two processes).

**Live traffic first.** ``reserved_for_live`` slots of every window are kept for live
traffic (the bot's own requests): bulk work (a migration) may use only the rest, so it can
never starve the bot. And live traffic does not queue behind a minute of others: a live
request that finds no slot within ``within`` seconds fails at once with
``BudgetExhausted`` (and when the next slot frees), which the service answers 503 with
``Retry-After``. Bulk requests wait as long as it takes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from brainbot.errors import BudgetExhausted

DEFAULT_LIMIT = 1200
DEFAULT_WINDOW = 300.0


class RequestBudget:
    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW,
        *,
        reserved_for_live: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("A request budget needs limit >= 1 and window > 0.")
        if not 0 <= reserved_for_live < limit:
            raise ValueError("reserved_for_live must be from 0 to less than the limit.")
        self.limit = limit
        self.window = window
        self.reserved_for_live = reserved_for_live
        self._clock = clock
        self._sleep = sleep
        self._finished: deque[float] = deque()
        self._in_flight = 0
        self._paused_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turns = {True: asyncio.Lock(), False: asyncio.Lock()}  # FIFO per class
        self._released = asyncio.Event()
        self.requests = 0
        """How many requests this budget has let through (for reports and benchmarks)."""

    def __repr__(self) -> str:
        return f"RequestBudget(limit={self.limit}, window={self.window})"

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the server said so, e.g. with Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self, *, live: bool = False, within: float | None = None) -> AsyncIterator[None]:
        """Hold one request slot. ``live`` may use the reserved share; with ``within``,
        give up with ``BudgetExhausted`` rather than wait longer than that."""
        await self._acquire(live, within)
        try:
            yield
        finally:
            self._in_flight -= 1
            self._finished.append(self._clock())
            self._released.set()

    def _bind(self) -> None:
        """asyncio primitives belong to one loop: a budget shared by a process that runs
        several loops one after another (CLI commands, tests) gets fresh ones per loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._turns = {True: asyncio.Lock(), False: asyncio.Lock()}
            self._released = asyncio.Event()

    async def _acquire(self, live: bool, within: float | None) -> None:
        self._bind()
        cap = self.limit if live else self.limit - self.reserved_for_live
        deadline = None if within is None else self._clock() + within
        if within is None:
            await self._take(cap, None)
            return
        try:
            async with asyncio.timeout(within):  # also bounds the wait for our turn
                await self._take(cap, deadline)
        except TimeoutError:
            raise self._exhausted(within) from None

    def _exhausted(self, within: float) -> BudgetExhausted:
        now = self._clock()
        free_at = self._finished[0] + self.window if self._finished else now + 1.0
        return BudgetExhausted(
            f"No API request slot within {within:g} s (the budget is spent).",
            retry_after=max(free_at, self._paused_until) - now,
        )

    async def _take(self, cap: int, deadline: float | None) -> None:
        async with self._turns[cap == self.limit]:
            while True:
                now = self._clock()
                while self._finished and self._finished[0] <= now - self.window:
                    self._finished.popleft()
                used = self._in_flight + len(self._finished)
                wake: float | None = None
                if now < self._paused_until:
                    wake = self._paused_until
                elif used < cap:
                    self._in_flight += 1
                    self.requests += 1
                    return
                elif used - cap < len(self._finished):
                    # finished slots expire oldest first: this one's expiry frees ours
                    wake = self._finished[used - cap] + self.window
                if deadline is not None and wake is not None and wake > deadline:
                    raise TimeoutError  # it will not free in time: fail now, not later
                if wake is not None:
                    await self._sleep(wake - now)
                else:  # every slot is in flight: wait for one to come back
                    self._released.clear()
                    await self._released.wait()
