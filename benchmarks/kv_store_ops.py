"""KVStore's Redis operations next to redis-py, and what each costs in KV API requests.

Latency is the median of sequential calls. Requests per operation are counted on the
REST client (the calls that spend Cloudflare's API budget), with the store's memory of
its own writes turned off so every read really goes to KV."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.table import Table

from benchmarks.timing import median_ms
from brainbot.kv import CloudflareKV, EmbeddedKV, RequestBudget
from brainbot.storage import KVStore

Op = Callable[[Any, int], Awaitable[object]]

OPS: dict[str, tuple[Op, Op | None]] = {
    # name: (operation, preparation run once before timing)
    "get": (lambda s, i: s.get("s:get"), lambda s, i: s.set("s:get", "v" * 100)),
    "set": (lambda s, i: s.set(f"s:set:{i}", "v" * 100), None),
    "set ex=3600": (lambda s, i: s.set(f"s:setex:{i}", "v" * 100, ex=3600), None),
    "incr": (lambda s, i: s.incr(f"s:incr:{i % 20}"), None),
    "mget 10": (lambda s, i: s.mget([f"s:set:{j}" for j in range(10)]), None),
    "lpush": (lambda s, i: s.lpush(f"s:list:{i % 20}", "message"), None),
    "lrange 0 -1 (50)": (
        lambda s, i: s.lrange("s:list50", 0, -1),
        lambda s, i: s.rpush("s:list50", *[f"m{j}" for j in range(50)]),
    ),
    "hset": (lambda s, i: s.hset(f"s:hash:{i % 20}", "field", i), None),
    "hgetall": (lambda s, i: s.hgetall("s:hash:0"), None),
    "sadd": (lambda s, i: s.sadd(f"s:set:{i % 20}x", i), None),
    "zadd": (lambda s, i: s.zadd(f"s:z:{i % 20}", {f"m{i}": i}), None),
    "zrange withscores": (lambda s, i: s.zrange("s:z:0", 0, -1, withscores=True), None),
    "expire": (lambda s, i: s.expire(f"s:set:{i}", 600), None),
    "ttl": (lambda s, i: s.ttl(f"s:setex:{i}"), None),
    "exists": (lambda s, i: s.exists(f"s:set:{i}"), None),
    "delete": (lambda s, i: s.delete(f"s:set:{i}"), None),
    # commands added with redis-py's whole data API (issue 15)
    "getset": (lambda s, i: s.getset(f"s:gs:{i % 20}", i), None),
    "getex ex=600": (lambda s, i: s.getex("s:get", ex=600), None),
    "setrange": (lambda s, i: s.setrange(f"s:sr:{i % 20}", 5, "xyz"), None),
    "getrange": (lambda s, i: s.getrange("s:get", 10, 20), None),
    "scan count=100": (lambda s, i: s.scan(0, match="s:set:*", count=100), None),
    "copy": (lambda s, i: s.copy("s:get", f"s:copy:{i}"), None),
    "linsert": (lambda s, i: s.linsert("s:list50", "BEFORE", "m25", i), None),
    "lpos": (lambda s, i: s.lpos("s:list50", "m40"), None),
    "lmove": (lambda s, i: s.lmove("s:list50", "s:list50", "LEFT", "RIGHT"), None),
    "hincrbyfloat": (lambda s, i: s.hincrbyfloat(f"s:hash:{i % 20}", "f", 0.5), None),
    "sinter 2": (lambda s, i: s.sinter("s:set:0x", "s:set:1x"), None),
    "sunionstore 2": (lambda s, i: s.sunionstore("s:su", "s:set:0x", "s:set:1x"), None),
    "smove": (lambda s, i: s.smove("s:set:2x", "s:set:3x", i), None),
    "zincrby": (lambda s, i: s.zincrby(f"s:z:{i % 20}", 1, "m"), None),
    "zrangebyscore": (lambda s, i: s.zrangebyscore("s:z:0", "-inf", "+inf"), None),
    "zrank": (lambda s, i: s.zrank("s:z:0", "m"), None),
    "zunionstore 2": (lambda s, i: s.zunionstore("s:zu", ["s:z:0", "s:z:1"]), None),
    "zpopmin": (lambda s, i: s.zpopmin(f"s:z:{i % 20}"), None),
}


async def run(
    tmp: Path, redis_port: int, server_url: str, token: str, quick: bool
) -> tuple[Table, str]:
    n = 50 if quick else 200
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port)
    await redis.flushdb()
    embedded = KVStore(EmbeddedKV(tmp / "ops.sqlite3"), write_interval=0, recent_window=0)
    client = CloudflareKV(
        account_id="test-account",
        namespace_id="ops",
        api_token=token,
        base_url=server_url,
        budget=RequestBudget(10**9, 1.0),
    )
    rest = KVStore(client, write_interval=0, recent_window=0)
    rows = []
    for name, (op, prepare) in OPS.items():
        timings = []
        for store in (redis, embedded, rest):
            if prepare is not None:
                await prepare(store, 0)
            before = client.budget.requests
            timings.append(await median_ms(n, lambda i, s=store, o=op: o(s, i)))
            if store is rest:
                per_op = (client.budget.requests - before) / n
        rows.append((name, *timings, per_op))
    await redis.flushdb()
    await redis.aclose()
    await embedded.aclose()
    await rest.aclose()

    table = Table(
        "operation",
        "Redis ms",
        "KVStore embedded ms",
        "×",
        "KVStore REST ms",
        "×",
        "KV requests/op",
    )
    lines = [
        "| operation | Redis p50 ms | KVStore embedded p50 ms | vs Redis | KVStore REST p50 ms "
        "| vs Redis | KV API requests per op |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, e, k, per_op in rows:
        cells = [
            name,
            f"{r:.3f}",
            f"{e:.3f}",
            f"{e / r:.1f}×",
            f"{k:.3f}",
            f"{k / r:.1f}×",
            f"{per_op:g}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        "## kv_store: Redis operations on KV\n\n"
        f"Median of {n} sequential calls per operation; Redis (redis-py on loopback) is the "
        "baseline. KVStore runs without write spacing and without its memory of its own "
        "writes, so every read goes to KV. `KV API requests per op` counts the REST "
        "client's HTTP requests: a read is 1 (`bulk/get` returns value, expiry and the type "
        "metadata together), a read-modify-write is 2 (1 read + 1 write), `delete`/`exists` "
        "read first because Redis reports how many keys existed. With the default 60 s "
        "memory on Cloudflare, reads of keys this process just wrote cost 0.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return table, text
