"""More of `brainbot serve` tried as a hostile client would: floods that cost KV requests,
sessions across instances, and races between a logout and the requests still running.
Real processes over real HTTP, or the service on a real store with a fault injected."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from brainbot.composition import load_settings, open_store
from brainbot.storage.conversations import ConversationStore, Message
from brainbot.storage.protocol import Store
from brainbot.storage.sessions import SessionStore, session_key
from tests.support.kv import server_stats
from tests.support.processes import Service, start_kv_server
from tests.support.service import bot_env_on_rest, login, start_bot


@pytest.fixture
def two_instances_on_rest(tmp_path: Path, api_token: str) -> Iterator[tuple[Service, Service, str]]:
    """Two `brainbot serve` instances on one namespace of `brainbot kv serve` (whose
    request counts tell what the service spent), and that server's url."""
    server = start_kv_server(tmp_path / "kv-serve", api_token)
    # sessions only: no read-modify-write across the two
    env = bot_env_on_rest(tmp_path / "data", server.url, api_token, BRAINBOT_RATE_READS="3/minute")
    first, second = start_bot(env), start_bot(env)
    yield first, second, server.url
    first.stop()
    second.stop()
    server.stop()


def test_a_flood_with_one_genuine_session_id_costs_no_kv_requests(
    two_instances_on_rest: tuple[Service, Service, str], api_token: str
) -> None:
    """Every request read its session from KV before any limit was applied: 30 requests
    of a user over the read limit cost 30 session reads (all answered 429), and 30 with a
    session logged out cost 30 (all 401). One user could spend the API budget of all."""
    first, second, kv_url = two_instances_on_rest

    def spent() -> int:
        return int(asyncio.run(server_stats(kv_url, api_token))["requests"])  # type: ignore[call-overload]

    with (
        httpx.Client(base_url=first.url, timeout=30) as one,
        httpx.Client(base_url=second.url, timeout=30) as other,
    ):
        alice = login(one, "alice")  # the session comes from the first instance
        before = spent()
        codes = [other.get("/conversations", headers=alice).status_code for _ in range(30)]
        assert codes == [200] * 3 + [429] * 27
        assert spent() - before <= 6  # 3 session reads and 3 lists; was 33

        bob = login(one, "bob")
        assert one.delete("/sessions", headers=bob).status_code == 204
        before = spent()
        codes = [other.get("/conversations", headers=bob).status_code for _ in range(30)]
        assert codes == [401] * 30
        assert spent() - before <= 1  # found dead once; was 30


class LogoutBetweenReadAndRefresh:
    """Fault injection: the store of one instance, where another instance's logout lands
    just after a session is read (while the request that read it is still running)."""

    def __init__(self, store: Store, other: Store) -> None:
        self.store, self.other = store, other

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def get(self, key: str) -> object:
        value = await self.store.get(key)
        await self.other.delete(key)  # DELETE /sessions on the other instance
        return value


async def test_a_logout_is_not_undone_by_a_refresh_on_another_instance(tmp_path: Path) -> None:
    """A request read its session, a logout on another instance deleted it, and the
    request's sliding refresh wrote the whole session back: logged out, yet the id worked
    for another hour (a stolen id outlived the victim's logout)."""
    settings = load_settings(BRAINBOT_DATA_DIR=str(tmp_path / "data"))
    first, second = open_store(settings), open_store(settings)
    now = [1_000_000.0]
    key = b"k" * 32
    try:
        issuing = SessionStore(first, lifetime=120, signing_key=key, clock=lambda: now[0])
        session = await issuing.create({"user": "alice"})
        now[0] += 61  # less than half the lifetime left: the next read refreshes it
        racing = SessionStore(
            LogoutBetweenReadAndRefresh(second, first),  # type: ignore[arg-type]
            lifetime=120,
            signing_key=key,
            clock=lambda: now[0],
        )
        assert await racing.get(session.id) is None  # the logout won
        assert await issuing.get(session.id) is None  # and is not undone
        assert await first.get(session_key("session:", session.id)) is None
    finally:
        await first.aclose()
        await second.aclose()


async def test_many_conversations_do_not_grow_the_process_without_end(tmp_path: Path) -> None:
    """Every conversation ever appended to kept an append count (for the trim every 100
    appends) in the serving process's memory for ever: a user making conversations at the
    write limit grew it by about 200 bytes each, 35 MB a day, never given back."""
    store = open_store(load_settings(BRAINBOT_DATA_DIR=str(tmp_path / "data")))
    conversations = ConversationStore(store, max_messages=3, trim_every=4)
    try:
        for n in range(5000):
            await conversations.append(f"c{n}", Message("user", "x"))
        assert len(conversations._appends) <= 4096  # the counts kept: bounded
        for _ in range(40):  # a conversation whose count was forgotten is still trimmed
            await conversations.append("c0", Message("user", "x"))
        assert await conversations.count("c0") == 3
        page = await conversations._primary.newest("c0", 1000, None, None)
        assert len(page[0]) <= 3 + 4  # trims ran: at most one trim_every past the cap
    finally:
        await store.aclose()
