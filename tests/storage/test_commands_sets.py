"""Set commands beyond what the differential test can compare: random answers (SPOP,
SRANDMEMBER) by their properties, SSCAN's cursor (ours is not Redis's) by its guarantees,
and argument checks and edge cases against a real Redis, answer for answer."""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScanCommands, SetCommands

from brainbot.kv import EmbeddedKV
from brainbot.storage import KVStore
from tests.support import compare

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


async def outcome(store: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An answer or the error, with what Redis leaves unordered put in order."""
    answer = await compare.outcome(store, name, args, kwargs)
    if answer[0] != "ok":
        return answer
    result = answer[1]
    if name == "sscan_iter":
        return ("ok", sorted(result))
    if name == "sscan":  # the cursor is ours to choose; a page of a small set is all of it
        return ("ok", result[0] == 0, sorted(result[1]))
    if isinstance(result, list) and name in ("spop", "srandmember"):
        return ("ok", sorted(result))  # only counts covering the whole set are compared
    return answer


async def seed(store: Any) -> None:
    await store.sadd("a", "x", "y", "z", 1)
    await store.sadd("b", "y", 1, b"\xff")
    await store.sadd("i", 3, 1, 2, 10, -5)
    await store.set("s", "text")
    await store.set("t", "text")
    await store.expire("t", 500)


CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    # argument checks, in Redis's order (count before key, key before options)
    ("spop", ("a", -1), {}),
    ("spop", ("missing", -1), {}),
    ("spop", ("s", -1), {}),
    ("spop", ("a", 1.5), {}),
    ("spop", ("a", "x"), {}),
    ("spop", ("a", True), {}),
    ("spop", ("s", 0), {}),
    ("spop", ("s",), {}),
    ("spop", ("missing",), {}),
    ("spop", ("missing", 3), {}),
    ("spop", ("a", 0), {}),
    ("srandmember", ("a", 1.5), {}),
    ("srandmember", ("a", 2**63), {}),
    ("srandmember", ("a", -(2**63)), {}),
    ("srandmember", ("s", "x"), {}),
    ("srandmember", ("s", 0), {}),
    ("srandmember", ("s",), {}),
    ("srandmember", ("missing",), {}),
    ("srandmember", ("missing", -3), {}),
    ("srandmember", ("a", 0), {}),
    ("srandmember", ("a", "10"), {}),
    ("srandmember", ("b", 3), {}),
    ("smismember", ("a", ["x", "q", 1]), {}),
    ("smismember", ("a", "x", "y"), {}),
    ("smismember", ("missing", ["x"]), {}),
    ("smismember", ("s", ["x"]), {}),
    ("smismember", ("a", []), {}),
    ("sintercard", ("x", ["a"]), {}),
    ("sintercard", (1.0, ["a"]), {}),
    ("sintercard", (0, []), {}),
    ("sintercard", (-1, ["a"]), {}),
    ("sintercard", (3, ["a", "b"]), {}),
    ("sintercard", (5, ["a", "b"]), {}),
    ("sintercard", (4, ["a", "b"]), {}),
    ("sintercard", (1, ["a", "b"]), {}),
    ("sintercard", (2, ["a", "b"]), {"limit": "x"}),
    ("sintercard", (2, ["a", "b"]), {"limit": 1.5}),
    ("sintercard", (2, ["s", "b"]), {"limit": -1}),
    ("sintercard", (2, ["missing", "s"]), {}),
    ("sintercard", (2, ["a", "b"]), {"limit": 1}),
    ("sintercard", (2, ["a", "b"]), {"limit": "5"}),
    ("sintercard", (1, "a"), {}),  # redis-py spreads a string into one-letter keys
    ("sinter", ([],), {}),
    ("sunion", ([],), {}),
    ("sdiff", ("a",), {}),
    ("sdiff", (["missing", "s"],), {}),
    ("sdiff", (["s", "a"],), {}),
    ("sinter", (["missing", "s"],), {}),  # every key is checked, even after an empty one
    ("sunion", ("a", "b", "i", "missing"), {}),
    ("sdiffstore", ("d", []), {}),
    ("sinterstore", ("d", []), {}),
    ("sinterstore", ("d", ["a", "s"]), {}),
    ("smove", ("a", "s", "y"), {}),
    ("smove", ("a", "s", "not-there"), {}),
    ("smove", ("missing", "s", "x"), {}),
    ("smove", ("s", "a", "x"), {}),
    ("smove", ("a", "a", "y"), {}),
    ("smove", ("a", "a", "q"), {}),
    ("sscan", ("missing", 0), {"count": 0}),
    ("sscan", ("s", 0), {"count": 0}),
    ("sscan", ("s", "x"), {}),
    ("sscan", ("a", "x"), {}),
    ("sscan", ("a", " 3"), {}),
    ("sscan", ("a", 1.5), {}),
    ("sscan", ("a", "-18446744073709551616"), {}),
    ("sscan", ("a", 18446744073709551616), {}),
    ("sscan", ("a", 0), {"count": 0}),
    ("sscan", ("a", 0), {"count": -1}),
    ("sscan", ("a", 0), {"count": "x"}),
    ("sscan", ("a", 0), {"match": "[xy]"}),
    ("sscan", ("b", ""), {"match": b"\xff"}),
    ("sscan", ("b", 0), {"match": "?"}),
    ("sscan", ("i", 0), {"match": "1*", "count": 100}),
    ("sscan_iter", ("a",), {"match": "*"}),
    ("sscan_iter", ("b",), {"count": 1}),
    ("sscan_iter", ("missing",), {"count": 0}),
    ("sscan_iter", ("s",), {}),
    ("sscan_iter", ("a",), {"count": 0}),
    ("sscan_iter", ("i",), {"match": "[0-2]"}),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), CALLS)
async def test_answers_and_errors_as_redis(
    store_factory: Any,
    redis_client: aioredis.Redis,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    async with store_factory() as store:
        await seed(store)
        await seed(redis_client)
        expected = await outcome(redis_client, name, args, kwargs)
        assert await outcome(store, name, args, kwargs) == expected
        for key in ("a", "b", "i", "s"):  # and the same effect
            assert await store.type(key) == await redis_client.type(key)


async def test_store_commands_replace_the_destination_and_delete_it_when_empty(
    store_factory: Any, redis_client: aioredis.Redis
) -> None:
    async with store_factory() as store:
        for client in (store, redis_client):
            await seed(client)
            assert await client.sunionstore("t", "a", "b") == 5  # over a string with a TTL
            assert await client.type("t") == b"set"
            assert await client.ttl("t") == -1
            assert await client.sinterstore("t", ["a", "b"]) == 2
            assert await client.sdiffstore("a", ["a", "b"]) == 2  # a source is the destination
            assert await client.sinterstore("s", ["i", "missing"]) == 0
            assert await client.sdiffstore("b", "b", "b") == 0
            assert await client.sdiffstore("nothing", "missing") == 0
        for key in ("a", "b", "s", "t", "nothing"):
            assert await store.exists(key) == await redis_client.exists(key)
            if await redis_client.exists(key):
                assert await store.smembers(key) == await redis_client.smembers(key)


async def test_smove_keeps_both_ttls_and_drops_an_emptied_source(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.sadd("from", "m", "n")
        await store.sadd("to", "o")
        await store.expire("from", 500)
        await store.expire("to", 900)
        assert await store.smove("from", "to", "m") is True
        assert 400 < await store.ttl("from") <= 500
        assert 800 < await store.ttl("to") <= 900
        assert await store.smove("from", "new", "n") is True
        assert await store.exists("from") == 0
        assert await store.smembers("new") == {b"n"}
        assert await store.ttl("new") == -1
        assert await store.smove("from", "to", "n") is False


async def test_spop_takes_random_distinct_members(store_factory: Any) -> None:
    members = {str(i).encode() for i in range(20)}
    async with store_factory() as store:
        await store.sadd("k", *members)
        await store.expire("k", 500)
        one = await store.spop("k")
        assert one in members
        assert await store.sismember("k", one) == 0
        some = await store.spop("k", 5)
        assert isinstance(some, list)
        assert len(some) == len(set(some)) == 5
        assert set(some) <= members - {one}
        left = await store.smembers("k")
        assert left == members - {one} - set(some)
        assert 400 < await store.ttl("k") <= 500  # popping keeps the TTL
        rest = await store.spop("k", 100)
        assert sorted(rest) == sorted(left)
        assert await store.exists("k") == 0
        assert await store.spop("k") is None
        assert await store.spop("k", 2) == []


async def test_spop_is_random(store_factory: Any) -> None:
    async with store_factory() as store:
        seen = set()
        for _ in range(30):
            await store.sadd("k", "a", "b", "c")
            seen.add(await store.spop("k"))
        assert seen == {b"a", b"b", b"c"}


async def test_srandmember_counts(store_factory: Any) -> None:
    members = {b"p", b"q", b"r"}
    async with store_factory() as store:
        await store.sadd("k", *members)
        assert await store.srandmember("k") in members
        for n in (1, 2, 3, 10):
            picked = await store.srandmember("k", n)
            assert len(picked) == len(set(picked)) == min(n, 3)  # distinct when positive
            assert set(picked) <= members
        repeated = await store.srandmember("k", -60)
        assert len(repeated) == 60  # exactly that many when negative, repeats allowed
        assert set(repeated) <= members
        assert max(Counter(repeated).values()) > 1
        assert len(set(repeated)) > 1  # and random
        assert await store.smembers("k") == members  # nothing taken


async def test_sscan_pages_through_every_member_once(store_factory: Any) -> None:
    members = {f"m{i}".encode() for i in range(57)}
    async with store_factory() as store:
        await store.sadd("k", *members)
        for count in (None, 1, 7, 100):
            seen: list[bytes] = []
            cursor, pages = 0, 0
            while True:
                cursor, page = await store.sscan("k", cursor, count=count)
                seen += page
                pages += 1
                if cursor == 0:
                    break
            assert sorted(seen) == sorted(members)
            assert pages == -(-57 // (count or 10))
        assert sorted([m async for m in store.sscan_iter("k", count=3)]) == sorted(members)
        # MATCH filters each page after COUNT members were examined, as Redis does
        cursor, page = await store.sscan("k", 0, match="m1*", count=57)
        assert cursor == 0
        assert sorted(page) == sorted(m for m in members if m.startswith(b"m1"))


async def test_sscan_sees_every_member_kept_while_others_are_removed(
    store_factory: Any,
) -> None:
    """The guarantee an index cursor would break: remove each member once seen."""
    members = {f"m{i}".encode() for i in range(40)}
    async with store_factory() as store:
        await store.sadd("k", *members)
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, page = await store.sscan("k", cursor, count=4)
            seen |= set(page)
            if page:
                await store.srem("k", *page)
            await store.sadd("k", f"new{len(seen)}")  # and others come meanwhile
            if cursor == 0:
                break
        assert seen >= members


async def test_sscan_matches_bytes_as_redis_does(tmp_path: Any) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.sadd("k", b"\xff\x00", "é", b"ab")
        assert await store.sscan("k", match=b"\xff*") == (0, [b"\xff\x00"])
        assert await store.sscan("k", match="é") == (0, ["é".encode()])
        assert sorted((await store.sscan("k", match="??"))[1]) == sorted(
            [b"\xff\x00", "é".encode(), b"ab"]  # one byte per ?, not one character
        )


async def test_decoded_answers(tmp_path: Any) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True) as store:
        await store.sadd("a", "x", "y")
        await store.sadd("b", "y")
        assert await store.sdiff("a", "b") == {"x"}
        cursor, page = await store.sscan("a")
        assert (cursor, sorted(page)) == (0, ["x", "y"])
        assert [m async for m in store.sscan_iter("a")] == page  # in the same order
        assert await store.srandmember("b") == "y"
        assert await store.srandmember("b", 2) == ["y"]
        assert await store.spop("b") == "y"
        assert await store.smismember("a", ["x", "z"]) == [1, 0]
        assert await store.sintercard(2, ["a", "a"]) == 2


NEW_COMMANDS = ["sdiff", "sdiffstore", "sinter", "sinterstore", "sintercard", "sunion"]
NEW_COMMANDS += ["sunionstore", "smove", "spop", "srandmember", "smismember", "sscan"]


def test_signatures_are_redis_pys() -> None:
    for name in NEW_COMMANDS:
        ours = inspect.signature(getattr(KVStore, name)).parameters
        theirs = inspect.signature(
            getattr(SetCommands, name, None) or getattr(AsyncScanCommands, name)
        ).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
    ours = inspect.signature(KVStore.sscan_iter).parameters
    theirs = inspect.signature(AsyncScanCommands.sscan_iter).parameters
    assert [(p.name, p.default) for p in ours.values()] == [
        (p.name, p.default) for p in theirs.values()
    ]
