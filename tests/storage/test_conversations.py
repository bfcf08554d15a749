"""Conversation history and sessions on every backend of open_store(): kv (embedded and
REST to `brainbot kv serve`), redis, and dual; KV's request costs; read-your-writes."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from brainbot.kv import EmbeddedKV
from brainbot.kv.faults import Faults
from brainbot.kv.limits import MAX_METADATA_BYTES
from brainbot.storage import DualStore, KVStore
from brainbot.storage.conversations import (
    ROLES,
    ConversationError,
    ConversationStore,
    Message,
    legacy_messages,
    message_id,
    message_item,
)
from brainbot.storage.sessions import SessionError, SessionNotFound, SessionStore
from tests.support.kv import fault_args, rest_client
from tests.support.processes import Service, start_kv_server


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["kv-embedded", "kv-rest", "redis", "dual"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, api_token: str, redis_url: str
) -> AsyncIterator[Any]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    if request.param == "kv-embedded":
        store: Any = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0)
    elif request.param == "kv-rest":
        server: Service = request.getfixturevalue("kv_server_realtime")
        store = KVStore(rest_client(server.url, api_token, uuid.uuid4().hex), write_interval=0)
    elif request.param == "redis":
        store = redis
    else:
        store = DualStore(KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0), redis)
    yield store
    await redis.flushdb()
    await store.aclose()
    if request.param != "redis" and request.param != "dual":
        await redis.aclose()


async def test_append_and_history_in_chronological_order(backend: Any) -> None:
    conversations = ConversationStore(backend)
    c1 = await conversations.create("alice")
    for i in range(12):
        role = "user" if i % 2 == 0 else "assistant"
        await conversations.append(c1, Message(role, f"m{i} é🙂", metadata={"i": i}))
    newest = await conversations.history(c1, limit=5)
    assert [m.content for m in newest] == [f"m{i} é🙂" for i in range(7, 12)]
    assert [m.metadata for m in newest] == [{"i": i} for i in range(7, 12)]
    older = await conversations.history(c1, limit=5, before=newest[0].id)
    assert [m.content for m in older] == [f"m{i} é🙂" for i in range(2, 7)]
    assert await conversations.count(c1) == 12
    assert await conversations.conversations("alice") == [c1]
    assert await conversations.history("other") == []


async def test_owners_own_their_conversations_only(backend: Any) -> None:
    conversations = ConversationStore(backend)
    mine = await conversations.create("alice")
    theirs = await conversations.create("bob/with a slash é")  # any identity fits a key
    assert await conversations.owns(mine, "alice")
    assert not await conversations.owns(theirs, "alice")
    assert not await conversations.owns(mine, "bob/with a slash é")
    assert await conversations.conversations("bob/with a slash é") == [theirs]
    await conversations.append(mine, Message("user", "hi"))
    assert await conversations.delete(mine, "alice") == 1
    assert not await conversations.owns(mine, "alice")  # the index entry went too
    assert await conversations.conversations("alice") == []


async def test_a_turn_is_written_whole_or_not_at_all(backend: Any) -> None:
    conversations = ConversationStore(backend, max_content_bytes=100)
    cid = await conversations.create("alice")
    with pytest.raises(ConversationError):
        await conversations.append_turn(
            cid, [Message("user", "question"), Message("assistant", "x" * 101)]
        )
    assert await conversations.history(cid) == []
    asked, answered = await conversations.append_turn(
        cid, [Message("user", "question"), Message("assistant", "answer")]
    )
    assert asked.id > answered.id  # newest first: the answer sorts before the question
    assert [m.content for m in await conversations.history(cid)] == ["question", "answer"]


async def test_pages_keep_to_a_byte_budget(backend: Any) -> None:
    conversations = ConversationStore(backend)
    cid = await conversations.create("alice")
    for i in range(20):
        await conversations.append(cid, Message("user", f"{i:02d}" + "z" * 3000))
    page = await conversations.page(cid, limit=1000, max_bytes=10_000)
    assert [m.content[:2] for m in page.messages] == ["17", "18", "19"]
    assert page.next_before is not None  # a token: the next page needs no rescan
    seen = [m.content[:2] for m in page.messages]
    while page.next_before is not None:
        page = await conversations.page(cid, limit=1000, before=page.next_before, max_bytes=10_000)
        seen = [m.content[:2] for m in page.messages] + seen
    assert seen == [f"{i:02d}" for i in range(20)]  # every message once, in order


async def test_big_messages_round_trip(backend: Any) -> None:
    conversations = ConversationStore(backend)
    big = "long " * 2000  # far over KV's 1,024-byte metadata: stored in the value only
    await conversations.append("c", Message("user", "short"))
    await conversations.append("c", Message("assistant", big, metadata={"model": "echo"}))
    history = await conversations.history("c")
    assert [(m.role, m.content, m.metadata) for m in history] == [
        ("user", "short", None),
        ("assistant", big, {"model": "echo"}),
    ]


async def test_delete_and_cap(backend: Any) -> None:
    conversations = ConversationStore(backend, max_messages=5, trim_every=7)
    for i in range(10):
        await conversations.append("c", Message("user", f"m{i}"))
    assert [m.content for m in await conversations.history("c", limit=50)] == [
        f"m{i}" for i in range(5, 10)
    ]
    assert await conversations.count("c") == 5
    assert await conversations.trim("c") > 0  # one trim already ran at the 7th append
    assert await conversations.delete("c") == 5
    assert await conversations.history("c") == []
    assert await conversations.count("c") == 0


async def test_age_limit_hides_old_messages(tmp_path: Path) -> None:
    clock = Clock()
    store = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock), clock=clock, write_interval=0)
    conversations = ConversationStore(store, max_age=3600, clock=clock)
    await conversations.append("c", Message("user", "old", timestamp=clock.now))
    clock.now += 1800
    await conversations.append("c", Message("user", "new", timestamp=clock.now))
    clock.now += 1801
    assert [m.content for m in await conversations.history("c")] == ["new"]
    assert await conversations.count("c") == 1
    await store.aclose()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.append("", Message("user", "x")), ConversationError),
        (lambda c: c.append("a/b", Message("user", "x")), ConversationError),
        (lambda c: c.append("c", Message("wizard", "x")), ConversationError),
        (lambda c: c.history("c", limit=0), ConversationError),
        (lambda c: c.history("c", limit=1001), ConversationError),
    ],
)
async def test_bad_input_is_refused(tmp_path: Path, call: Any, error: type) -> None:
    store = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0)
    with pytest.raises(error):
        await call(ConversationStore(store))
    assert await store.keys() == []
    await store.aclose()


# -- KV request costs ----------------------------------------------------------------------


async def test_kv_costs_append_1_write_newest_50_of_10000_in_2_requests(
    tmp_path: Path, api_token: str
) -> None:
    data = tmp_path / "srv"
    service = start_kv_server(data, api_token)
    try:
        # 10,000 messages written straight into the server's file (fast), 10 of the newest
        # 50 too big for metadata
        async with KVStore(
            EmbeddedKV(data / "costs.sqlite3", durable=False), write_interval=0
        ) as local:
            writer = ConversationStore(local)
            for i in range(10_000):
                content = ("x" * 2000) if i % 5 == 0 and i >= 9_950 else f"message {i}"
                await writer.append("big-chat", Message("user", content))
        client = rest_client(service.url, api_token, "costs")
        async with KVStore(client, write_interval=0, recent_window=0) as store:
            conversations = ConversationStore(store)
            before = client.budget.requests
            newest = await conversations.history("big-chat", limit=50)
            assert client.budget.requests - before == 2  # 1 list + 1 bulk read of the 10 big ones
            assert [m.content[:13] for m in newest[-2:]] == ["message 9998", "message 9999"]
            assert len(newest) == 50
            assert sum(len(m.content) == 2000 for m in newest) == 10
            before = client.budget.requests
            await conversations.append("big-chat", Message("assistant", "reply"))
            assert client.budget.requests - before == 1
            before = client.budget.requests
            await conversations.history("small-chat", limit=50)
            assert client.budget.requests - before == 1
    finally:
        service.stop()


async def test_read_your_writes_while_kv_list_lags(tmp_path: Path, api_token: str) -> None:
    service = start_kv_server(tmp_path / "srv", api_token, *fault_args(Faults(list_lag=30.0)))
    try:
        namespace = rest_client(service.url, api_token, "lag")
        async with KVStore(namespace, write_interval=0) as store:
            conversations = ConversationStore(store)
            for text in ("one", "two", "three"):
                await conversations.append("c", Message("user", text))
            assert [m.content for m in await conversations.history("c")] == ["one", "two", "three"]
            assert await conversations.count("c") == 3
            other_process = ConversationStore(KVStore(rest_client(service.url, api_token, "lag")))
            assert await other_process.history("c") == []  # KV's list has not caught up
            # a store with its own memory off still reads its own appends back
            forgetful = ConversationStore(KVStore(namespace, write_interval=0, recent_window=0))
            await forgetful.append("d", Message("user", "mine"))
            assert [m.content for m in await forgetful.history("d")] == ["mine"]
            await conversations.delete("c")
            assert await conversations.history("c") == []
    finally:
        service.stop()


# -- sessions ------------------------------------------------------------------------------


async def test_session_lifecycle(backend: Any) -> None:
    sessions = SessionStore(backend, lifetime=600)
    session = await sessions.create({"user": "alice"})
    assert len(session.id) == 43  # 256 random bits, URL-safe
    assert session.id not in repr(session)
    got = await sessions.get(session.id)
    assert got is not None
    assert got.data == {"user": "alice"}
    updated = await sessions.update(session.id, {"user": "alice", "turns": 1})
    assert updated.data["turns"] == 1
    fresh = await sessions.regenerate(session.id)
    assert fresh.id != session.id
    assert await sessions.get(session.id) is None
    got = await sessions.get(fresh.id)
    assert got is not None
    assert got.data == {"user": "alice", "turns": 1}
    assert await sessions.delete(fresh.id) is True
    assert await sessions.get(fresh.id) is None
    with pytest.raises(SessionNotFound):
        await sessions.update(fresh.id, {})
    with pytest.raises(SessionError):
        await sessions.get("not a session id, with spaces")


async def test_sliding_expiry_writes_only_when_the_lifetime_runs_low(tmp_path: Path) -> None:
    clock = Clock()
    store = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock), clock=clock, write_interval=0)
    writes: list[str] = []
    original_set = store.set

    async def counting_set(*args: Any, **kwargs: Any) -> Any:
        writes.append(args[0])
        return await original_set(*args, **kwargs)

    store.set = counting_set  # type: ignore[method-assign]  # counts, then really writes
    sessions = SessionStore(store, lifetime=600, refresh_below=300, clock=clock)
    session = await sessions.create({})
    for _ in range(1000):  # a busy session: 1,000 reads in 290 s
        clock.now += 0.29
        assert await sessions.get(session.id) is not None
    assert len(writes) == 1  # only the create
    clock.now += 20  # now under 300 s left
    assert await sessions.get(session.id) is not None
    assert len(writes) == 2  # one refresh
    clock.now += 599
    assert await sessions.get(session.id) is not None  # the refresh slid the expiry
    clock.now += 601
    assert await sessions.get(session.id) is None  # expired sessions are unreadable
    await store.aclose()


async def test_a_busy_session_still_ends_and_its_id_is_no_key(tmp_path: Path) -> None:
    clock = Clock()
    store = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock), clock=clock, write_interval=0)
    sessions = SessionStore(store, lifetime=600, max_lifetime=3600, clock=clock)
    session = await sessions.create({"user": "alice"})
    assert not [k for k in await store.keys() if session.id.encode() in k]  # a digest only
    alive = 0.0
    while await sessions.get(session.id) is not None:  # a request every 290 s
        clock.now += 290
        alive += 290
        assert alive < 10_000, "the session slid for ever"
    assert 3600 <= alive < 3600 + 290  # the first read past its absolute end failed
    await store.aclose()


async def test_retention_by_bytes(backend: Any) -> None:
    conversations = ConversationStore(backend, max_bytes=5_000, trim_every=4)
    cid = await conversations.create("alice")
    for i in range(8):
        await conversations.append(cid, Message("user", f"m{i}" + "q" * 2000))
    assert [m.content[:2] for m in await conversations.history(cid)] == ["m6", "m7"]
    assert await conversations.count(cid) == 2
    await conversations.trim(cid)
    page = await conversations.page(cid, limit=10)
    assert (len(page.messages), page.next_before) == (2, None)


def test_session_options_are_checked() -> None:
    with pytest.raises(SessionError):
        SessionStore(object(), lifetime=30)
    with pytest.raises(SessionError):
        SessionStore(object(), lifetime=600, refresh_below=600)


async def test_both_layouts_order_and_page_alike_with_skewed_clocks(
    tmp_path: Path, redis_url: str
) -> None:
    """Two processes whose clocks differ by 2 s: on KV and on Redis, history and paging
    follow the message ids (time, then writer), and paging returns every message once."""
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    for store in (
        KVStore(EmbeddedKV(tmp_path / f"{uuid.uuid4().hex}.sqlite3"), write_interval=0),
        redis,
    ):
        ahead, behind = Clock(), Clock()
        ahead.now += 2
        fast, slow = ConversationStore(store, clock=ahead), ConversationStore(store, clock=behind)
        for i in range(6):
            await (fast if i % 2 == 0 else slow).append("skew", Message("user", f"m{i}"))
        everything = await fast.history("skew", limit=100)
        assert sorted(m.content for m in everything) == [f"m{i}" for i in range(6)]
        pages, before = [], None
        while True:
            page = await slow.history("skew", limit=2, before=before)
            if not page:
                break
            pages = page + pages
            before = page[0].id
        assert pages == everything
    await redis.flushdb()
    await redis.aclose()


async def test_old_bot_entries_without_ids_read_in_list_order(redis_url: str) -> None:
    import json as _json

    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.rpush(
        "conversation:old",
        *[_json.dumps({"role": "user", "content": f"old {i}", "user": "alice"}) for i in range(3)],
    )
    conversations = ConversationStore(redis, max_messages=4, trim_every=1)
    await conversations.append("old", Message("assistant", "new 0"))
    await conversations.append("old", Message("assistant", "new 1"))
    history = await conversations.history("old")
    assert [m.content for m in history] == ["old 1", "old 2", "new 0", "new 1"]  # oldest trimmed
    assert history[0].metadata == {"user": "alice"}  # unknown fields kept, not fatal
    await redis.flushdb()
    await redis.aclose()


async def test_big_messages_of_unknown_size_are_measured_not_guessed(tmp_path: Path) -> None:
    """Messages written before sizes were recorded: neither retention nor a page counts
    them as 1 MiB each (which deleted and hid history)."""
    store = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0)
    conversations = ConversationStore(store, max_bytes=100_000, trim_every=10_000)
    cid = await conversations.create("alice")
    for i in range(20):
        stored = await conversations.append(cid, Message("assistant", f"{i:02d}" + "w" * 2000))
        key = f"conv/{cid}/{stored.id}"
        entry = await store.namespace.get(key)
        assert entry is not None
        legacy = {k: v for k, v in entry.metadata.items() if k != "s"}  # type: ignore[union-attr]
        await store.namespace.put(key, entry.value, metadata=legacy)  # as an older version
    assert await conversations.count(cid) == 20
    assert await conversations.trim(cid) == 0
    page = await conversations.page(cid, limit=50, max_bytes=50_000)
    assert len(page.messages) == 20
    await store.aclose()


async def test_each_further_page_costs_one_list_request(tmp_path: Path, api_token: str) -> None:
    data = tmp_path / "srv"
    service = start_kv_server(data, api_token)
    try:
        async with KVStore(
            EmbeddedKV(data / "pages.sqlite3", durable=False), write_interval=0
        ) as local:
            writer = ConversationStore(local)
            for i in range(3000):
                await writer.append("deep", Message("user", f"m{i}"))
        client = rest_client(service.url, api_token, "pages")
        async with KVStore(client, write_interval=0, recent_window=0) as store:
            conversations = ConversationStore(store)
            page = await conversations.page("deep", limit=100)
            pages, costs = 1, []
            while page.next_before is not None:
                before = client.budget.requests
                page = await conversations.page("deep", limit=100, before=page.next_before)
                costs.append(client.budget.requests - before)
                pages += 1
            assert pages == 30
            assert max(costs) <= 2  # never a rescan from the newest message
            assert sum(costs) <= 30 + 3  # about one list request per page
    finally:
        service.stop()


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400) | st.text(
    st.sampled_from('aé€😀"\\\n'), min_size=150, max_size=1_100
)


@settings(max_examples=300, deadline=None)
@given(
    content=_TEXT,
    role=st.sampled_from(sorted(ROLES)),
    extra=st.none()
    | st.dictionaries(st.text(max_size=5), st.text(max_size=300), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(-(2**60), 2**60), max_size=3),
)
def test_a_message_is_summed_up_in_its_metadata_exactly_when_that_fits(
    content: str, role: str, extra: dict[str, Any] | None
) -> None:
    """The entry's metadata holds role, time and content whenever their JSON fits beside
    the migration's stamp, else a summary: the shortcut on lengths never decides otherwise
    than encoding would. Characters of 1 to 4 bytes and escapes around the boundary."""
    message = Message(role, content, 1_700_000_000.5, extra, "9999999999999.abcd")
    item = message_item("p/", "c1", message, None)
    small: dict[str, Any] = {"r": role, "t": message.timestamp, "c": content}
    if extra is not None:
        small["m"] = extra
    exact = all(  # a Worker keeps integers exactly up to 2**53 only
        abs(v) <= 2**53 for v in (extra or {}).values() if isinstance(v, int)
    )
    fits = len(orjson.dumps(small)) <= MAX_METADATA_BYTES - 64 and exact
    assert item.metadata == (
        small
        if fits
        else {"r": role, "t": message.timestamp, "big": 1, "s": len(item.value.encode())}
    )
    assert item.value == message.text()
    assert item.key == "p/conv/c1/9999999999999.abcd"


def test_legacy_times_in_milliseconds_are_read_as_seconds() -> None:
    """Before: a time in milliseconds made an id of a negative number
    (``-1690000004123000.legacy00``), which sorts before every other message."""
    raws = [
        orjson.dumps({"role": "user", "content": "a", "timestamp": 1_700_000_004_001}),
        orjson.dumps({"role": "user", "content": "b", "timestamp": 1_700_000_005_000_000}),
        orjson.dumps({"role": "user", "content": "c", "timestamp": 1_700_000_006}),
    ]
    decoded = legacy_messages(raws, strict=True)
    assert decoded is not None
    messages = [m for _, m in decoded]
    assert [m.timestamp for m in messages] == [1_700_000_004.001, 1_700_000_005.0, 1_700_000_006]
    assert all(re.fullmatch(r"\d{13}\.legacy00", m.id) for m in messages)
    # the id keeps the exact milliseconds (1700000004.001 * 1000 is 1700000004000.9998)
    assert messages[0].id == message_id(1_700_000_004_001, "legacy00")
    assert sorted(m.id for m in messages) == [m.id for m in reversed(messages)]  # newest first


@pytest.mark.parametrize("role", [["user"], {"user": 1}])
def test_a_legacy_element_with_an_unhashable_role_is_not_a_message(role: object) -> None:
    """Reviewed: ``role in ROLES`` raised TypeError for a list or dict role: a Redis
    conversation holding one answered 500 for ever, and the migration crashed."""
    raws = [
        orjson.dumps({"role": role, "content": "x"}),
        orjson.dumps({"role": "user", "content": "y"}),
    ]
    assert legacy_messages(raws, strict=True) is None
    lenient = legacy_messages(raws, strict=False)
    assert lenient is not None
    assert [m.content for _, m in lenient] == ["y"]


def test_a_legacy_id_of_other_scripts_digits_is_not_taken() -> None:
    """Reviewed: the id pattern's ``\\d`` took Arabic-Indic digits, so an element's own id
    could be longer in bytes than in characters: with a long prefix its message key
    passed the migration's length check and then stopped the run at its bulk write."""
    foreign = "\u0660" * 12 + "\u0661" + ".abcdefgh"
    raws = [orjson.dumps({"role": "user", "content": "x", "id": foreign})]
    decoded = legacy_messages(raws, strict=True)
    assert decoded is not None
    assert re.fullmatch(r"[0-9]{13}\.legacy00", decoded[0][1].id)
