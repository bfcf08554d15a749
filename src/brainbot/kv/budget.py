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
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

DEFAULT_LIMIT = 1200
DEFAULT_WINDOW = 300.0


class RequestBudget:
    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("A request budget needs limit >= 1 and window > 0.")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._finished: deque[float] = deque()
        self._in_flight = 0
        self._paused_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn = asyncio.Lock()  # waiters are served in arrival order
        self._released = asyncio.Event()
        self.requests = 0
        """How many requests this budget has let through (for reports and benchmarks)."""

    def __repr__(self) -> str:
        return f"RequestBudget(limit={self.limit}, window={self.window})"

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the server said so, e.g. with Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
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
            self._loop, self._turn, self._released = loop, asyncio.Lock(), asyncio.Event()

    async def _acquire(self) -> None:
        self._bind()
        async with self._turn:
            while True:
                now = self._clock()
                while self._finished and self._finished[0] <= now - self.window:
                    self._finished.popleft()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                if self._in_flight + len(self._finished) < self.limit:
                    self._in_flight += 1
                    self.requests += 1
                    return
                if self._finished:
                    await self._sleep(self._finished[0] + self.window - now)
                else:  # every slot is in flight: wait for one to come back
                    self._released.clear()
                    await self._released.wait()
