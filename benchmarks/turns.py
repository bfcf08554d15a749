"""A bot turn as the chat service makes it now (the session, the ownership check, the
history within a byte budget, the question and the reply in one write), next to the turn
before ownership existed (session, history, two appends), and a whole ``POST /chat``
through the service in process (JSON, identity, rate limits, the echo responder).

Requests are the REST client's HTTP requests, the calls that spend Cloudflare's budget."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.table import Table

from benchmarks.timing import median_ms
from brainbot.kv import CloudflareKV, EmbeddedKV, RequestBudget
from brainbot.service import ChatService, IdentityVerifier, Throttle
from brainbot.service.auth import mint
from brainbot.storage import KVStore
from brainbot.storage.conversations import ConversationStore, Message
from brainbot.storage.sessions import SessionStore

SECRET = "bench-identity-secret-" + "b" * 32


async def _measure(
    store: KVStore, counter: CloudflareKV | None, n: int
) -> list[tuple[str, float, float]]:
    def requests() -> int:
        return counter.budget.requests if counter is not None else 0

    conversations, sessions = ConversationStore(store), SessionStore(store)
    session = await sessions.create({"user": "alice"})
    cid = await conversations.create("alice")

    async def before(i: int) -> None:
        await sessions.get(session.id)
        await conversations.history(cid, limit=20)
        await conversations.append(cid, Message("user", f"q{i}"))
        await conversations.append(cid, Message("assistant", f"a{i}"))

    async def now(i: int) -> None:
        who = await sessions.get(session.id)
        assert who is not None
        assert await conversations.owns(cid, "alice")
        await conversations.page(cid, limit=20, max_bytes=1024 * 1024)
        await conversations.append_turn(
            cid, [Message("user", f"q{i}"), Message("assistant", f"a{i}")]
        )

    service = ChatService(
        store,
        identity=IdentityVerifier(secret=SECRET),
        throttle=Throttle(
            sessions="1000000/minute",
            writes="1000000/minute",
            failed_per_address="1000000/minute",
            reads="1000000/minute",
            writes_per_address="1000000/minute",
        ),
    )
    transport = httpx.ASGITransport(app=service.app(allowed_hosts=["bot"]))
    rows = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
        login = await http.post(
            "/sessions", headers={"Authorization": f"Bearer {mint(SECRET, 'alice')}"}
        )
        auth = {"Authorization": f"Bearer {login.json()['session']}"}
        chat = (await http.post("/chat", json={"message": "hi"}, headers=auth)).json()

        async def over_http(i: int) -> None:
            answer = await http.post(
                "/chat",
                json={"conversation": chat["conversation"], "message": f"q{i}"},
                headers=auth,
            )
            assert answer.status_code == 200, answer.text

        for name, turn in (
            ("before: session, history, two appends", before),
            ("now: session, ownership, history, one-write turn", now),
            ("now: POST /chat through the service", over_http),
        ):
            r0 = requests()
            ms = await median_ms(n, turn)
            rows.append((name, ms, (requests() - r0) / n))
    return rows


async def run(tmp: Path, server_url: str, token: str, quick: bool) -> tuple[Table, str]:
    n = 50 if quick else 200
    client = CloudflareKV(
        account_id="test-account",
        namespace_id="turns",
        api_token=token,
        base_url=server_url,
        budget=RequestBudget(10**9, 1.0),
    )
    stores: list[tuple[str, KVStore, CloudflareKV | None]] = [
        ("KV embedded", KVStore(EmbeddedKV(tmp / "turns.sqlite3"), write_interval=0), None),
        ("KV REST → kv serve", KVStore(client, write_interval=0, recent_window=0), client),
    ]
    rows: list[tuple[str, str, float, float, bool]] = []
    for store_name, store, counter in stores:
        for turn, ms, per_turn in await _measure(store, counter, n):
            rows.append((store_name, turn, ms, per_turn, counter is not None))
        await store.aclose()
    table = Table("store", "turn", "p50 ms", "KV requests per turn")
    lines = [
        "| store | bot turn | p50 ms | KV API requests per turn |",
        "|---|---|---:|---:|",
    ]
    for store_name, turn, ms, per_turn, counted in rows:
        cells = [store_name, turn, f"{ms:.3f}", f"{per_turn:g}" if counted else "-"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        "## A bot turn with authentication and ownership checks\n\n"
        f"Median of {n} turns on one conversation. **Before** is the turn as it was before "
        "identities and ownership: the session, the newest 20 messages, the question and the "
        "reply as two appends. **Now** adds the ownership check (one read of the owner's index "
        "entry) and writes the question and the reply in one bulk request (a turn is stored "
        "whole or not at all). **POST /chat** is the whole "
        "request through the service, in process: JSON parsing, the session, rate limits, "
        "ownership, the history within the 1 MiB answer budget, the echo responder, the turn. "
        "Requests are counted on the REST client with `KVStore`'s memory of its own writes "
        "off; the conversation store keeps its own 60 s memory of what it wrote (a turn needs "
        "the previous one), which answers the ownership check of a conversation this process "
        "created: 3 requests a turn then, 4 for a conversation another instance created.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return table, text
