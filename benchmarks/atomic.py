"""Read-modify-write (INCR) across processes' rules: latency and HTTP requests per operation
through the gateway with its Durable Object, against Redis and against the gateway's plain
path (get + put under a lock of this process, not atomic across processes); increments per
second on one hot key; and the embedded KV's atomic path (a SQLite transaction) against its
plain path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.table import Table

from benchmarks.timing import median_ms
from brainbot.kv import EmbeddedKV, GatewayKV
from brainbot.storage import KVStore

HOT_SECONDS = 3.0
HOT_TASKS = 8


async def _hot(incr: Callable[[], Awaitable[object]], seconds: float) -> float:
    """Increments per second of one key by HOT_TASKS concurrent tasks."""
    done = 0
    stop = time.perf_counter() + seconds

    async def task() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await incr()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(HOT_TASKS)))
    return done / (time.perf_counter() - start)


async def run(
    tmp: Path, redis_port: int, gateway_url: str, secret: str, quick: bool
) -> tuple[Table, str]:
    n = 50 if quick else 200
    hot_seconds = 1.5 if quick else HOT_SECONDS
    rows: list[tuple[str, float, str, float]] = []
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port)
    p50 = await median_ms(n, lambda i: redis.incr(f"bench:rmw:{i}"))
    rows.append(
        ("Redis (loopback)", p50, "-", await _hot(lambda: redis.incr("bench:hot"), hot_seconds))
    )
    await redis.aclose()

    for name, coordinated in (
        ("gateway + Durable Object (atomic)", True),
        ("gateway, plain get + put (before; not atomic across processes)", False),
    ):
        kv = GatewayKV(gateway_url, secret, coordinated=coordinated)
        store = KVStore(kv)
        before = kv.requests
        p50 = await median_ms(n, lambda i, s=store, c=coordinated: s.incr(f"bench:rmw:{c}:{i}"))
        per_op = (kv.requests - before) / n
        hot = await _hot(lambda s=store, c=coordinated: s.incr(f"bench:hot:{c}"), hot_seconds)
        rows.append((name, p50, f"{per_op:.2f}", hot))
        await store.aclose()

    for name, atomic in (
        ("embedded KV, SQLite transaction (atomic)", True),
        ("embedded KV, per-process lock (before)", False),
    ):
        embedded: Any = EmbeddedKV(tmp / f"atomic-{atomic}.sqlite3")
        if not atomic:
            embedded.coordinated = False  # the store then takes its per-process lock path
        store = KVStore(embedded)
        p50 = await median_ms(n, lambda i, s=store: s.incr(f"bench:rmw:{i}"))
        hot = await _hot(lambda s=store: s.incr("bench:hot"), hot_seconds)
        rows.append((name, p50, "-", hot))
        await store.aclose()

    redis_p50, redis_hot = rows[0][1], rows[0][3]
    table = Table("path", "INCR p50 ms", "× Redis", "HTTP requests / op", "hot key incr/s")
    lines = [
        "| path | INCR p50 | × Redis | HTTP requests per INCR | one hot key: INCR/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, p50, per_op, hot in rows:
        cells = [name, f"{p50:.2f}", f"{p50 / redis_p50:.1f}×", per_op, f"{hot:,.0f}"]
        table.add_row(*cells)
        lines.append(f"| {cells[0]} | {cells[1]} ms | {cells[2]} | {cells[3]} | {cells[4]} |")
    text = (
        "## Read-modify-write: atomic across processes\n\n"
        f"INCR of a fresh key, {n} sequential calls (median); then {HOT_TASKS} concurrent "
        f"tasks incrementing one key for {hot_seconds:g} s. Redis is measured in the same run "
        f"({redis_hot:,.0f} INCR/s on one key). Through the gateway an INCR is an xread and an "
        "xcommit to the Durable Object (one HTTP request each unless batched with other "
        "operations); the plain path is a get and a put, and is paced to KV's one write per "
        "second per key, which is why its hot key does about 1 INCR/s. The Durable Object "
        "writes the hot key to KV at most once a second whatever the increment rate "
        "(tests/storage/test_atomicity.py counts it). The embedded KV's atomic path is one "
        "SQLite transaction per INCR.\n\n" + "\n".join(lines) + "\n"
    )
    return table, text
