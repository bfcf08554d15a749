"""Reading the source: big containers streamed into exactly the JSON the codec writes and
the backup holds, steps of big values handed on in pieces, scripts refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainbot.migration.run import backup_line
from brainbot.migration.source import Encoded, Reader, connect
from brainbot.migration.transform import Options, plan


@pytest.fixture
async def source(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


elements = st.binary(min_size=0, max_size=12) | st.text(max_size=8).map(str.encode)
scores = st.floats(allow_nan=False) | st.sampled_from([float("inf"), float("-inf")])


async def _both(source: aioredis.Redis, key: bytes) -> tuple[object, object]:
    """The key read whole (as the batch script reads it) and streamed (slices of 3)."""
    whole = (await Reader(source).read([key]))[0]
    streamed = (await Reader(source, slice_size=3).read([key]))[0]
    return whole, streamed


def _same_forms(whole: object, streamed: object) -> None:
    assert isinstance(streamed.value, Encoded)  # type: ignore[attr-defined]
    assert not isinstance(whole.value, Encoded)  # type: ignore[attr-defined]
    whole.read_ms = streamed.read_ms = None  # type: ignore[attr-defined]  # (read apart)
    now = int(time.time() * 1000)
    a, b = plan(whole, Options(), now), plan(streamed, Options(), now)  # type: ignore[arg-type]
    assert [(i.key, i.value, i.metadata) for i in a.items] == [
        (i.key, i.value, i.metadata) for i in b.items
    ]
    back_a, back_b = orjson.loads(backup_line(whole, 0)), orjson.loads(backup_line(streamed, 0))  # type: ignore[arg-type]
    if back_a["type"] in ("set",):
        back_a["value"], back_b["value"] = sorted(back_a["value"]), sorted(back_b["value"])
    assert back_a == back_b


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["list", "hash", "set", "zset"]),
    data=st.lists(st.tuples(elements, elements, scores), min_size=4, max_size=30),
)
async def test_a_streamed_container_is_stored_and_backed_up_exactly_as_a_whole_one(
    source: aioredis.Redis, kind: str, data: list[tuple[bytes, bytes, float]]
) -> None:
    key = b"k"
    await source.delete(key)
    if kind == "list":
        await source.rpush(key, *[a for a, _, _ in data])
    elif kind == "hash":
        await source.hset(key, mapping={a: b for a, b, _ in data})
    elif kind == "set":
        await source.sadd(key, *[a for a, _, _ in data])
    else:
        await source.zadd(key, {a: s for a, _, s in data})
    count = {"list": source.llen, "hash": source.hlen, "set": source.scard, "zset": source.zcard}
    if await count[kind](key) <= 3:
        return  # small enough for the batch script even with slices of 3
    whole, streamed = await _both(source, key)
    _same_forms(whole, streamed)


async def test_a_non_utf8_element_late_in_a_container_turns_it_all_base64(
    source: aioredis.Redis,
) -> None:
    await source.rpush(b"l", *[f"e{i}".encode() for i in range(20)], b"\xff")
    whole, streamed = await _both(source, b"l")
    assert streamed.value.binary  # type: ignore[attr-defined]
    _same_forms(whole, streamed)


async def test_a_container_past_25_mib_as_kv_stores_it_is_not_held(
    source: aioredis.Redis,
) -> None:
    """Its JSON passes KV's limit while it is read: the read stops there, nothing kept."""
    chunk = [b"x" * 1000] * 1000
    for _ in range(27):
        await source.rpush(b"big", *chunk)  # 27 MB of elements, a few MB more as JSON
    (record,) = await Reader(source).read([b"big"])
    assert record.oversize
    assert record.value is None
    assert plan(record, Options(), 0).skipped == "value over KV's 25 MiB (not read)"


async def _calls(source: aioredis.Redis, command: str) -> int:
    stats = await source.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


_FILL = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('ZADD', KEYS[1], 1, string.format('m%07d', i))
end
"""


async def test_a_container_far_bigger_in_redis_than_on_kv_is_read_not_called_oversize(
    source: aioredis.Redis,
) -> None:
    """Redis spends about 100 bytes on a sorted set's member whose JSON takes 14: a
    leaderboard of 1.1 million members is over 100 MB in Redis, 16 MB on KV. Before: any
    container whose MEMORY USAGE passed 100 MB was "value over KV's 25 MiB (not read)"."""
    members = 1_100_000
    await source.eval(_FILL, 1, "board", members)
    assert await source.memory_usage("board") > 4 * 25 * 1024 * 1024  # the old rule's bound
    (record,) = await Reader(source).read([b"board"])
    assert not record.oversize
    assert isinstance(record.value, Encoded)
    assert record.value.count == members
    expected = [[f"m{i:07d}", 1.0] for i in range(1, members + 1)]
    assert orjson.loads(record.value.kv) == expected


async def test_a_set_past_25_mib_as_kv_stores_it_stops_being_gathered(
    source: aioredis.Redis,
) -> None:
    """A set is sorted before it is written, so its members are gathered first (on disk);
    the gathering stops once they surely pass KV's limit."""
    for start in range(0, 280_000, 10_000):
        await source.sadd("wide", *(b"%0100d" % i for i in range(start, start + 10_000)))
    (record,) = await Reader(source).read([b"wide"])  # 280,000 x 103 bytes: 28.8 MB
    assert record.oversize
    assert plan(record, Options(), 0).skipped == "value over KV's 25 MiB (not read)"


async def test_big_elements_come_a_few_a_slice(source: aioredis.Redis) -> None:
    """A slice asks for about 8 MB by MEMORY USAGE's sampled element size: 20 elements
    of 1 MB come in several replies, not one of 20 MB."""
    element = b"e" * (1024 * 1024)
    await source.rpush("heavy", *([element] * 20))
    before = await _calls(source, "lrange")
    (record,) = await Reader(source).read([b"heavy"])
    assert isinstance(record.value, Encoded)
    assert record.value.count == 20
    assert await _calls(source, "lrange") - before >= 3


async def test_a_container_whose_elements_are_each_over_25_mib_is_not_read(
    source: aioredis.Redis,
) -> None:
    """One such element alone cannot fit KV: the container is skipped unread."""
    await source.rpush("huge", b"h" * (27 * 1024 * 1024), b"h" * (27 * 1024 * 1024))
    before = await _calls(source, "lrange")
    (record,) = await Reader(source).read([b"huge"])
    assert record.oversize
    assert record.value is None
    assert await _calls(source, "lrange") == before


async def test_a_step_of_big_values_comes_in_pieces(source: aioredis.Redis) -> None:
    for i in range(6):
        await source.set(f"s{i}", b"v" * (2 * 1024 * 1024))  # over the script's 1 MB
    keys = [f"s{i}".encode() for i in range(6)]
    pieces = [p async for p in Reader(source).pieces(keys, budget=5 * 1024 * 1024)]
    assert len(pieces) >= 2
    assert [r.key for p in pieces for r in p] == keys
    assert all(len(r.value) == 2 * 1024 * 1024 for p in pieces for r in p)


async def test_where_scripts_are_refused_the_same_records_come_pipelined(
    source: aioredis.Redis, redis_url: str
) -> None:
    """Some hosted Redis forbid EVAL: the reader notices and reads the same records."""
    await source.set("s", "v")
    await source.rpush("l", "a", "b")
    await source.hset("h", mapping={"f": "v"})
    await source.rpush("big", *[f"e{i}" for i in range(50)])
    await source.xadd("stream", {"a": "1"})
    await source.execute_command(
        "ACL", "SETUSER", "noscripts", "on", ">pw-noscripts", "~*", "+@all", "-@scripting"
    )
    keys = [b"s", b"l", b"h", b"big", b"stream", b"gone"]
    scripted = await Reader(source, slice_size=10).read(keys)
    url = redis_url.replace("redis://", "redis://noscripts:pw-noscripts@")
    limited = connect(url)
    try:
        reader = Reader(limited, slice_size=10)
        pipelined = await reader.read(keys)
        assert not reader._scripts_allowed
    finally:
        await limited.aclose()
        await source.execute_command("ACL", "DELUSER", "noscripts")

    def shown(records: list) -> list:  # type: ignore[type-arg]
        """What the migration makes of each record: KV entries and backup."""
        out = []
        for r in records:
            r.read_ms = None  # the two reads are moments apart: the forms are compared
            items = [(i.key, i.value, i.metadata) for i in plan(r, Options(), 0).items]
            backup = orjson.loads(backup_line(r, 0)) if r.value is not None else None
            out.append((r.key, r.type, r.pttl > 0, items, backup))
        return out

    assert shown(pipelined) == shown(scripted)


async def test_read_ahead_stops_its_reader_when_the_caller_leaves_early() -> None:
    """Before: the reader, cancelled while its queue was full, waited in its ``finally``
    to hand on the end, and stayed pending with what it held."""
    import asyncio

    from brainbot.migration.source import read_ahead

    async def endless(hand_on: Any) -> None:
        n = 0
        while True:
            await hand_on(n)
            n += 1

    before = asyncio.all_tasks()
    items = read_ahead(endless, 2)
    assert await anext(items) == 0
    await asyncio.sleep(0.01)  # the queue fills
    await asyncio.wait_for(items.aclose(), 5)  # before: for ever
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() - before if not t.done()] == []


async def test_a_key_that_changes_type_before_its_own_read_is_reported_not_fatal(
    source: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key the batch script saw as a big list, replaced by a string (the bot is live)
    before its slices are read: WRONGTYPE stopped the whole migration. Fault injection:
    the replacement happens right after the script's pass, on the real server."""
    await source.rpush("moving", *([b"x" * 1000] * 2000))  # over 1 MB: read on its own
    await source.set("steady", "v")
    first_pass = Reader._first_pass

    async def then_replaced(self: Reader, keys: Any) -> Any:
        found = await first_pass(self, keys)
        await source.delete("moving")
        await source.set("moving", "now a string")
        return found

    monkeypatch.setattr(Reader, "_first_pass", then_replaced)
    moving, steady = await Reader(source).read([b"moving", b"steady"])
    assert (
        plan(moving, Options(), 0).skipped == "changed type while being read (re-run the migration)"
    )
    assert steady.value == b"v"


def test_a_container_of_exactly_25_mib_as_kv_stores_it_is_not_too_big() -> None:
    """KV takes a value of 25 MiB exactly (the plan and a string's check allow it). Before:
    a streamed container counted one comma more than its JSON has, and a set's gathering
    one byte more than its fewest, so one of exactly 25 MiB was called oversize."""
    from brainbot.kv.limits import MAX_VALUE_BYTES
    from brainbot.migration.source import _SortedMembers, _Stream

    member = b"x" * (MAX_VALUE_BYTES - 4)  # ["x...x"]: 25 MiB exactly
    stream = _Stream(binary=False)
    stream.add([member.decode()], [""], 1, len(member))
    assert len(stream.result(b"[]").kv) == MAX_VALUE_BYTES
    members = _SortedMembers()
    try:
        members.add([member])
        assert list(members.in_order(10)) == [[member]]
    finally:
        members.close()
