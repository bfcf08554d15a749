"""Conversation history: the KV layout (one key per message, newest first, small messages
in metadata) next to the old Redis layout (one list per conversation). The bot turn is in
``benchmarks/turns.py``.

Requests are the REST client's HTTP requests, the calls that spend Cloudflare's budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.table import Table

from benchmarks.timing import median_ms
from brainbot.kv import CloudflareKV, EmbeddedKV, RequestBudget
from brainbot.storage import KVStore
from brainbot.storage.conversations import ConversationStore, Message


async def _measure(
    store: Any, counter: CloudflareKV | None, tmp: Path, n: int, size: int
) -> tuple[float, float, float, float]:
    conversations = ConversationStore(store)
    if counter is not None:  # REST: write the long conversation straight into the server's file
        filler = ConversationStore(
            KVStore(
                EmbeddedKV(tmp / "serve" / "conversations.sqlite3", durable=False), write_interval=0
            )
        )
    else:
        filler = conversations
    for i in range(size):
        await filler.append("long", Message("user", f"message {i}"))

    def requests() -> int:
        return counter.budget.requests if counter is not None else 0

    r0 = requests()
    append_ms = await median_ms(
        n, lambda i: conversations.append("bench", Message("user", f"m{i}"))
    )
    append_req = (requests() - r0) / n
    r0 = requests()
    history_ms = await median_ms(n, lambda i: conversations.history("long", limit=50))
    history_req = (requests() - r0) / n
    return append_ms, append_req, history_ms, history_req


async def run(
    tmp: Path, redis_port: int, server_url: str, token: str, quick: bool
) -> tuple[Table, str]:
    n, size = (50, 2_000) if quick else (200, 10_000)
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port)
    await redis.flushdb()
    client = CloudflareKV(
        account_id="test-account",
        namespace_id="conversations",
        api_token=token,
        base_url=server_url,
        budget=RequestBudget(10**9, 1.0),
    )
    stores = {
        "Redis list (old layout)": (redis, None),
        "KV embedded": (KVStore(EmbeddedKV(tmp / "conv.sqlite3"), write_interval=0), None),
        "KV REST → kv serve": (KVStore(client, write_interval=0, recent_window=0), client),
    }
    rows = [
        (name, *await _measure(store, counter, tmp, n, size))
        for name, (store, counter) in stores.items()
    ]
    await redis.flushdb()
    for store, _ in stores.values():
        await store.aclose()

    table = Table("layout", "append ms", "req", f"newest 50 of {size:,} ms", "req")
    lines = [
        f"| layout | append p50 ms | requests | newest 50 of {size:,} p50 ms | requests |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, a, ar, h, hr in rows:
        counted = name.startswith("KV REST")
        cells = [
            name,
            f"{a:.3f}",
            f"{ar:g}" if counted else "-",
            f"{h:.3f}",
            f"{hr:g}" if counted else "-",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        "## Conversation history and sessions\n\n"
        f"Median of {n} calls. `newest 50` reads from a {size:,}-message conversation. "
        "Requests are counted on the "
        "REST client (the store's memory of its own writes off): an append is 1 write, the "
        "newest 50 messages 1 list request (small messages ride in metadata). The old Redis "
        "layout is one list per conversation, where concurrent writers are safe only because "
        "Redis's RPUSH is atomic; on KV that layout would lose messages.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return table, text
