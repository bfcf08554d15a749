"""A bot turn (session read, ownership check, history read, the turn in one write) through
the REST API and through the gateway Worker: HTTP requests and latency, for one user and
for many at once.

REST requests spend the account's 1,200 per 5 minutes; gateway requests do not (the KV
calls happen inside the Worker through its binding), and concurrent turns share batches."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from brainbot.kv import CloudflareKV, GatewayKV, RequestBudget
from brainbot.storage import KVStore
from brainbot.storage.conversations import ConversationStore, Message
from brainbot.storage.sessions import SessionStore


async def _turns(store: KVStore, users: int, rounds: int) -> tuple[float, int]:
    conversations, sessions = ConversationStore(store), SessionStore(store)
    ids = [(await sessions.create({"user": f"u{u}"})).id for u in range(users)]
    cids = [await conversations.create(f"u{u}") for u in range(users)]

    async def turn(u: int, r: int) -> None:
        await sessions.get(ids[u])
        assert await conversations.owns(cids[u], f"u{u}")
        await conversations.page(cids[u], limit=20, max_bytes=1024 * 1024)
        await conversations.append_turn(
            cids[u], [Message("user", f"q{r}"), Message("assistant", f"a{r}")]
        )

    samples = []
    for r in range(rounds):
        start = time.perf_counter()
        await asyncio.gather(*(turn(u, r) for u in range(users)))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, users * rounds


async def run(
    tmp: Path, server_url: str, token: str, gateway_url: str, secret: str, quick: bool
) -> tuple[Table, str]:
    rounds = 5 if quick else 20
    rows = []
    for users in (1, 50):
        for name in ("REST API → kv serve", "gateway Worker (Miniflare)"):
            if name.startswith("REST"):
                client: Any = CloudflareKV(
                    account_id="test-account",
                    namespace_id=f"turns{users}",
                    api_token=token,
                    base_url=server_url,
                    budget=RequestBudget(10**9, 1.0),
                )
                counted = lambda c=client: c.budget.requests  # noqa: E731
            else:
                client = GatewayKV(gateway_url, secret)
                counted = lambda c=client: c.requests  # noqa: E731
            store = KVStore(client, write_interval=0, recent_window=0)
            before = counted()
            ms, turns = await _turns(store, users, rounds)
            per_turn = (counted() - before) / turns
            rows.append((users, name, ms, per_turn, "yes" if name.startswith("REST") else "no"))
            await store.aclose()
    table = Table(
        "users at once", "path", "p50 ms per round", "HTTP requests per turn", "spends API budget"
    )
    lines = [
        "| users at once | path | p50 ms per round of turns | HTTP requests per turn "
        "| spends the 1,200/5 min API budget |",
        "|---:|---|---:|---:|---|",
    ]
    for users, name, ms, per_turn, budget in rows:
        cells = [str(users), name, f"{ms:.1f}", f"{per_turn:.2f}", budget]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        "## Live traffic: REST API vs gateway Worker\n\n"
        "A bot turn is a session read, the ownership check, a history read (20 messages) and "
        "the question and the reply in one write, made one after the other (each needs the "
        "previous). With one user the gateway cannot batch (4 requests per turn either way) "
        "but none of them spends the REST API budget; with 50 users at once, their concurrent "
        "operations share batches. At 4 REST requests per turn the 1,200-per-5-minutes budget "
        "allows one turn a second for the whole account.\n\n" + "\n".join(lines) + "\n"
    )
    return table, text
