"""The migration at scale: mixed keys from a real redis-server into the embedded KV and
into the local KV API server, next to the time it takes only to read the same keys from
Redis (the floor), and the API requests used against the minimum (keys / 10,000)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import redis.asyncio as aioredis
from rich.table import Table

from brainbot.config import Settings
from brainbot.kv import CloudflareKV, EmbeddedKV, RequestBudget
from brainbot.migration import migrate_redis_to_kv
from brainbot.migration.source import read, scan_batches


async def fill(redis: aioredis.Redis, n: int) -> None:
    """n mixed keys: strings (some with TTLs), counters, hashes, lists, sets, sorted sets,
    and legacy conversations of 10 messages."""
    await redis.flushdb()
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        kind = i % 10
        if kind < 4:
            pipe.set(f"cache:{i}", f"value {i} " * 4, ex=86_400 if kind % 2 else None)
        elif kind == 4:
            pipe.incrby(f"counter:{i}", i)
        elif kind == 5:
            pipe.hset(f"user:{i}", mapping={"name": f"user {i}", "turns": i % 50})
        elif kind == 6:
            pipe.rpush(f"queue:{i}", "a", "b", "c")
        elif kind == 7:
            pipe.sadd(f"tags:{i}", "x", "y")
        elif kind == 8:
            pipe.zadd(f"scores:{i}", {"a": 1.0, "b": 2.5})
        else:
            pipe.rpush(
                f"conversation:{i}",
                *[
                    json.dumps(
                        {
                            "role": "user" if m % 2 == 0 else "assistant",
                            "content": f"m{m}",
                            "timestamp": 1_700_000_000 + m,
                        }
                    )
                    for m in range(10)
                ],
            )
        if i % 10_000 == 9_999:
            await pipe.execute()
            pipe = redis.pipeline(transaction=False)
    await pipe.execute()


async def read_floor(url: str) -> float:
    redis = aioredis.Redis.from_url(url)
    start = time.perf_counter()
    async for _, keys in scan_batches(redis, count=1000):
        await read(redis, keys)
    await redis.aclose()
    return time.perf_counter() - start


async def run(
    tmp: Path, redis_port: int, server_url: str, token: str, quick: bool
) -> tuple[Table, str]:
    n = 50_000 if quick else 1_000_000
    url = f"redis://127.0.0.1:{redis_port}/1"
    redis = aioredis.Redis.from_url(url)
    await fill(redis, n)
    floor = await read_floor(url)
    rows = []
    for name in ("embedded KV", "REST client → kv serve"):
        settings = Settings(BRAINBOT_DATA_DIR=tmp / f"mig-{len(rows)}")  # type: ignore[call-arg]
        if name == "embedded KV":
            namespace: EmbeddedKV | CloudflareKV = EmbeddedKV(settings.embedded_kv_path)
        else:
            namespace = CloudflareKV(
                account_id="bench",
                namespace_id="migration",
                api_token=token,
                base_url=server_url,
                budget=RequestBudget(10**9, 1.0),
            )
        start = time.perf_counter()
        report = await migrate_redis_to_kv(
            url, namespace=namespace, runs=settings.data_dir / "migrations", verify_after=False
        )
        seconds = time.perf_counter() - start
        await namespace.aclose()
        minimum = math.ceil(report.kv_entries / 10_000)
        requests = report.api_requests if name != "embedded KV" else None
        rows.append((name, report.keys_seen, report.kv_entries, seconds, requests, minimum))
    await redis.flushdb()
    await redis.aclose()

    table = Table(
        "target", "keys", "KV entries", "s", "keys/s", "× read floor", "API requests", "minimum"
    )
    lines = [
        "| target | keys | KV entries | seconds | keys/s | time vs reading Redis only "
        "| API requests | minimum (entries / 10,000) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| read Redis only (the floor) | {n:,} | - | {floor:.1f} | {n / floor:,.0f} | 1.0× "
        "| - | - |",
    ]
    for name, keys, entries, seconds, requests, minimum in rows:
        cells = [
            name,
            f"{keys:,}",
            f"{entries:,}",
            f"{seconds:.1f}",
            f"{keys / seconds:,.0f}",
            f"{seconds / floor:.1f}×",
            "-" if requests is None else f"{requests:,}",
            f"{minimum:,}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        "## Migration: Redis to KV\n\n"
        f"{n:,} mixed keys (strings with and without TTLs, counters, hashes, lists, sets, sorted "
        "sets, and legacy conversations of 10 messages, which become one KV entry per message) "
        "migrated from a real redis-server on loopback, backup, manifest and checkpoints "
        "included, verification off. The floor is the time to SCAN and read the same keys "
        "from Redis and nothing else. API requests count the REST client's HTTP requests.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return table, text
