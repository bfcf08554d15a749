"""The one way the benchmarks time a call: the median of ``n`` sequential calls, in ms."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


async def median_ms(n: int, call: Callable[[int], Awaitable[object]]) -> float:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000
