"""Benchmarks of the KV namespace layer against a Redis baseline measured in the same run.

    ./scripts/bench            # or: .venv/bin/python -m benchmarks.run [--quick]

Starts a throwaway redis-server and `brainbot kv serve` on loopback, measures latency
(sequential calls: p50, p99) and throughput (concurrent calls) of get, put and list on
the embedded KV, on the REST client against the local server, and on redis-py, then prints
a table and writes it, with ratios to Redis, to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table
from tests.support.processes import ROOT, start_kv_server, start_redis, start_service

from benchmarks import atomic, conversations, gateway, kv_store_ops, migration, turns
from brainbot.kv import CloudflareKV, EmbeddedKV, KVNamespace, PutItem, RequestBudget

VALUE = b"x" * 100
LIST_KEYS = 100


@dataclass
class Result:
    backend: str
    op: str
    p50_ms: float
    p99_ms: float
    ops_per_s: float


class Op:
    """One operation on one backend: ``call(i)`` performs it for the i-th time."""

    def __init__(self, call: Callable[[int], Awaitable[object]]) -> None:
        self.call = call


def kv_ops(kv: KVNamespace) -> dict[str, Op]:
    return {
        "get": Op(lambda i: kv.get(f"bench:get:{i % 100}")),
        "put": Op(lambda i: kv.put(f"bench:put:{i}", VALUE)),
        "list 100": Op(lambda i: kv.list(prefix="bench:list:", limit=LIST_KEYS)),
    }


async def kv_prepare(kv: KVNamespace) -> None:
    await kv.put_many(
        [PutItem(f"bench:get:{i}", VALUE) for i in range(100)]
        + [PutItem(f"bench:list:{i:03d}", VALUE) for i in range(LIST_KEYS)]
    )


def redis_ops(r: aioredis.Redis) -> dict[str, Op]:
    async def scan(i: int) -> list[bytes]:
        keys: list[bytes] = []
        async for key in r.scan_iter(match="bench:list:*", count=1000):
            keys.append(key)
        return keys

    return {
        "get": Op(lambda i: r.get(f"bench:get:{i % 100}")),
        "put": Op(lambda i: r.set(f"bench:put:{i}", VALUE)),
        "list 100": Op(scan),
    }


async def redis_prepare(r: aioredis.Redis) -> None:
    await r.mset({f"bench:get:{i}": VALUE for i in range(100)})
    await r.mset({f"bench:list:{i:03d}": VALUE for i in range(LIST_KEYS)})


async def measure(
    op: Op, n_latency: int, n_throughput: int, concurrency: int
) -> tuple[float, float, float]:
    for i in range(min(20, n_latency)):  # warm up connections and caches
        await op.call(10_000_000 + i)
    samples = []
    for i in range(n_latency):
        start = time.perf_counter()
        await op.call(i)
        samples.append(time.perf_counter() - start)
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
    counter = iter(range(n_latency, n_latency + n_throughput))

    async def worker() -> None:
        for i in counter:
            await op.call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return p50, p99, n_throughput / (time.perf_counter() - start)


async def run(quick: bool) -> tuple[list[Result], list[tuple[Table, str]]]:
    n_lat, n_tp, conc = (100, 400, 16) if quick else (500, 2000, 32)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_service, port = start_redis(Path(tmp))
        token = "bench-" + os.urandom(8).hex()
        kv_service = start_kv_server(Path(tmp) / "serve", token)
        gateway_service = start_service(
            ["node", "serve.mjs", "--port", "0"],
            r"^READY (\S+)$",
            env={"KV_GATEWAY_SECRET": token},
            cwd=ROOT / "workers" / "kv-gateway",
        )
        try:
            r = aioredis.Redis(host="127.0.0.1", port=port)
            await redis_prepare(r)
            backends: list[tuple[str, KVNamespace | None]] = [
                ("redis-py (loopback)", None),
                ("embedded KV", EmbeddedKV(Path(tmp) / "embedded.sqlite3")),
                (
                    "REST client → kv serve",
                    CloudflareKV(
                        account_id="test-account",
                        namespace_id="bench",
                        api_token=token,
                        base_url=kv_service.url,
                        budget=RequestBudget(10**9, 1.0),
                    ),
                ),
            ]
            for name, kv in backends:
                if kv is None:
                    ops = redis_ops(r)
                else:
                    await kv_prepare(kv)
                    ops = kv_ops(kv)
                for op_name, op in ops.items():
                    p50, p99, tput = await measure(op, n_lat, n_tp, conc)
                    results.append(Result(name, op_name, p50, p99, tput))
                if kv is not None:
                    await kv.aclose()
            await r.aclose()
            sections = [
                await kv_store_ops.run(Path(tmp), port, kv_service.url, token, quick),
                await conversations.run(Path(tmp), port, kv_service.url, token, quick),
                await turns.run(Path(tmp), kv_service.url, token, quick),
                await gateway.run(
                    Path(tmp), kv_service.url, token, gateway_service.url, token, quick
                ),
                await atomic.run(Path(tmp), port, gateway_service.url, token, quick),
                await migration.run(Path(tmp), port, kv_service.url, token, quick),
            ]
        finally:
            kv_service.stop()
            gateway_service.stop()
            redis_service.stop()
    return results, sections


def render(results: list[Result], quick: bool) -> tuple[Table, str]:
    base = {r.op: r for r in results if r.backend.startswith("redis")}
    table = Table("backend", "op", "p50 ms", "p99 ms", "ops/s", "p50 × Redis", "ops/s ÷ Redis")
    lines = [
        "| backend | op | p50 ms | p99 ms | ops/s | p50 vs Redis | throughput vs Redis |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b = base[r.op]
        lat, tp = r.p50_ms / b.p50_ms, r.ops_per_s / b.ops_per_s
        row = [
            r.backend,
            r.op,
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.ops_per_s:,.0f}",
            f"{lat:.1f}×",
            f"{tp:.2f}×",
        ]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    header = (
        "## KV namespace layer: get, put, list\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
        f"{' (quick run)' if quick else ''}. Redis is the baseline (ratio 1×); all servers on "
        "loopback in the same run. Latency: sequential calls; throughput: 32 concurrent "
        "callers (16 in a quick run). `put` on the embedded KV is a durable SQLite commit "
        "(`synchronous=FULL`, an fsync per write); Redis here keeps nothing on disk. "
        "`list 100` is one page of 100 names on KV and a `SCAN MATCH` on Redis. The REST rows "
        "are our client and the Python local server on loopback: the price of HTTP and JSON "
        "per call, not Cloudflare's network latency, which this machine cannot reach.\n\n"
    )
    return table, header + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    results, sections = asyncio.run(run(args.quick))
    table, markdown = render(results, args.quick)
    console = Console()
    console.print(table)
    for section_table, _ in sections:
        console.print(section_table)
    args.output.write_text(
        "# Benchmarks\n\nWritten by `./scripts/bench` (`python -m benchmarks.run`); "
        "numbers from one run, on one machine.\n\n"
        + "\n".join([markdown, *(text for _, text in sections)])
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
