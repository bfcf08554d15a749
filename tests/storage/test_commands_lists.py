"""List commands beyond what the differential test draws: argument checks in Redis's order
(an index as text, LPOS/LMPOP options, sides in any case) against a real Redis, answer for
answer; what LMOVE/LMPOP do to TTLs; and the blocking commands, refused."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from brainbot.kv import EmbeddedKV
from brainbot.storage import DualStore, KVStore, RedisBackend, errors
from tests.support.compare import outcome


async def seed(store: Any) -> None:
    await store.rpush("l", "a", "b", "c", "a", "b", "c")
    await store.rpush("m", "x", "y")
    await store.set("s", "text")


CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    # indexes as redis-py sends them: ints, or text Redis parses
    ("lindex", ("l", "0"), {}),
    ("lindex", ("l", b"-1"), {}),
    ("lindex", ("l", "x"), {}),
    ("lindex", ("l", "01"), {}),
    ("lindex", ("l", "-0"), {}),
    ("lindex", ("l", "+1"), {}),
    ("lindex", ("l", 1.0), {}),
    ("lindex", ("l", 2**63), {}),
    ("lindex", ("l", True), {}),
    ("lindex", ("missing", "x"), {}),  # the key is looked up before the index is parsed
    ("lindex", ("s", "x"), {}),
    ("lrange", ("l", "1", b"-2"), {}),
    ("lrange", ("missing", 0, "x"), {}),  # parsed first
    ("lrange", ("s", 0, "x"), {}),
    ("ltrim", ("missing", "x", 1), {}),
    ("ltrim", ("s", "x", 1), {}),
    ("ltrim", ("l", "1", "-2"), {}),
    ("lset", ("missing", "x", "v"), {}),  # "no such key" before the index
    ("lset", ("s", "x", "v"), {}),
    ("lset", ("l", "x", "v"), {}),
    ("lset", ("l", "-1", "z"), {}),
    ("lset", ("l", "99", "z"), {}),
    ("lrem", ("missing", "x", "a"), {}),
    ("lrem", ("l", "-1", "a"), {}),
    ("lpop", ("l", "x"), {}),
    ("lpop", ("missing", -1), {}),
    ("lpop", ("s", -1), {}),  # the count is checked before the type
    ("lpop", ("l", "2"), {}),
    ("rpop", ("l", 0), {}),
    ("rpop", ("missing", 2), {}),
    # pushes
    ("lpush", ("l",), {}),
    ("lpushx", ("l",), {}),
    ("rpushx", ("missing", "a"), {}),
    ("lpushx", ("s", "a"), {}),
    ("lpushx", ("m", "p", "q"), {}),
    ("rpushx", ("m", "r"), {}),
    # LINSERT
    ("linsert", ("l", "middle", "a", "x"), {}),
    ("linsert", ("missing", "middle", "a", "x"), {}),
    ("linsert", ("missing", "before", "a", "x"), {}),
    ("linsert", ("s", "before", "a", "x"), {}),
    ("linsert", ("l", "BEFORE", "zz", "x"), {}),
    ("linsert", ("l", "Before", "b", "x"), {}),
    ("linsert", ("l", "after", "c", "y"), {}),
    # LPOS
    ("lpos", ("l", "a"), {}),
    ("lpos", ("l", "a"), {"rank": -1}),
    ("lpos", ("l", "a"), {"rank": 2, "count": 1}),
    ("lpos", ("l", "a"), {"rank": -2, "count": 5}),
    ("lpos", ("l", "a"), {"count": 0}),
    ("lpos", ("l", "b"), {"rank": -1, "count": 0, "maxlen": 2}),
    ("lpos", ("l", "c"), {"maxlen": 2}),
    ("lpos", ("l", "c"), {"maxlen": 3, "count": 0}),
    ("lpos", ("l", "zz"), {"count": 3}),
    ("lpos", ("l", "a"), {"rank": 0}),
    ("lpos", ("l", "a"), {"rank": "x"}),
    ("lpos", ("l", "a"), {"count": -1}),
    ("lpos", ("l", "a"), {"count": "x"}),
    ("lpos", ("l", "a"), {"maxlen": -1}),
    ("lpos", ("missing", "a"), {}),
    ("lpos", ("missing", "a"), {"count": 2}),
    ("lpos", ("missing", "a"), {"rank": 0}),
    ("lpos", ("s", "a"), {}),
    ("lpos", ("s", "a"), {"count": -1}),
    # LMOVE / RPOPLPUSH
    ("lmove", ("l", "n", "up", "left"), {}),
    ("lmove", ("missing", "n", "up", "left"), {}),  # the sides are read first
    ("lmove", ("missing", "s"), {}),  # an absent source: the destination is not checked
    ("lmove", ("l", "s"), {}),
    ("lmove", ("s", "l"), {}),
    ("lmove", ("l", "n"), {}),
    ("lmove", ("l", "m", "right", "LEFT"), {}),
    ("lmove", ("l", "l", "LEFT", "rIGht"), {}),  # a rotation
    ("lmove", ("m", "m", "right", "right"), {}),
    ("rpoplpush", ("l", "n"), {}),
    ("rpoplpush", ("missing", "s"), {}),
    ("rpoplpush", ("l", "s"), {}),
    ("rpoplpush", ("m", "m"), {}),
    # LMPOP: what redis-py sends (numkeys, keys, side, COUNT), read as Redis reads it
    ("lmpop", (0, "l"), {"direction": "left"}),
    ("lmpop", ("x", "l"), {"direction": "left"}),
    ("lmpop", (-1, "l"), {"direction": "left"}),
    ("lmpop", (1, "l"), {"direction": "up"}),
    ("lmpop", (2, "l"), {"direction": "left"}),
    ("lmpop", (1, "l", "m"), {"direction": "left"}),
    ("lmpop", (1,), {"direction": "left"}),
    ("lmpop", (1, "l"), {"direction": "left", "count": 0}),
    ("lmpop", (1, "l"), {"direction": "left", "count": -1}),
    ("lmpop", (1, "l"), {"direction": "left", "count": "x"}),
    ("lmpop", (1, "l"), {"direction": "left", "count": None}),
    ("lmpop", (1, "missing"), {"direction": "left", "count": 0}),
    ("lmpop", (1, "missing"), {"direction": "left"}),
    ("lmpop", (1, "s"), {"direction": "left"}),
    ("lmpop", (2, "s", "l"), {"direction": "left"}),
    ("lmpop", (2, "missing", "s"), {"direction": "left"}),
    ("lmpop", (2, "l", "s"), {"direction": "left"}),  # stops at the first non-empty list
    ("lmpop", (2, "missing", "m"), {"direction": "RIGHT", "count": 10}),
    ("lmpop", (2, "missing", "l"), {"direction": "Right", "count": "2"}),
    ("lmpop", (1, "l", "left"), {"direction": "right"}),  # a key read as the side
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
        for key in ("l", "m", "n", "s", "missing"):  # and the same effect
            assert await store.type(key) == await redis_client.type(key)
            if await redis_client.type(key) == b"list":
                assert await store.lrange(key, 0, -1) == await redis_client.lrange(key, 0, -1)


async def test_lmove_keeps_both_ttls_and_drops_an_emptied_source(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.rpush("from", "m", "n")
        await store.rpush("to", "o")
        await store.expire("from", 500)
        await store.expire("to", 900)
        assert await store.lmove("from", "to", "LEFT", "LEFT") == b"m"
        assert 400 < await store.ttl("from") <= 500
        assert 800 < await store.ttl("to") <= 900
        assert await store.lrange("to", 0, -1) == [b"m", b"o"]
        assert await store.rpoplpush("from", "new") == b"n"
        assert await store.exists("from") == 0
        assert await store.lrange("new", 0, -1) == [b"n"]
        assert await store.ttl("new") == -1
        assert await store.lmove("from", "to") is None
        await store.expire("new", 300)
        assert await store.lmove("new", "new", "right", "left") == b"n"  # a rotation keeps it
        assert 200 < await store.ttl("new") <= 300


async def test_lmpop_keeps_the_ttl_and_deletes_an_emptied_list(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.rpush("b", "1", "2", "3")
        await store.expire("b", 500)
        assert await store.lmpop(2, "a", "b", direction="RIGHT", count=2) == [b"b", [b"3", b"2"]]
        assert 400 < await store.ttl("b") <= 500
        assert await store.lmpop(2, "a", "b", direction="LEFT", count=5) == [b"b", [b"1"]]
        assert await store.exists("b") == 0
        assert await store.lmpop(2, "a", "b", direction="LEFT") is None


async def test_decoded_answers(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True) as store:
        await store.rpush("l", "é", "b", "é")
        assert await store.lmpop(1, "l", direction="left") == ["l", ["é"]]
        assert await store.lmove("l", "m") == "b"
        assert await store.rpoplpush("l", "m") == "é"
        assert await store.lrange("m", "0", "-1") == ["é", "b"]
        assert await store.lpos("m", "b") == 1
        assert await store.lindex("m", "-1") == "b"


BLOCKING = [
    ("blpop", (["a", "b"],), {"timeout": 1}, "BLPOP", "LPOP"),
    ("brpop", ("a",), {}, "BRPOP", "RPOP"),
    ("brpoplpush", ("a", "b", 1), {}, "BRPOPLPUSH", "RPOPLPUSH"),
    ("blmove", ("a", "b", 1), {"src": "RIGHT"}, "BLMOVE", "LMOVE"),
    ("blmpop", (1, 2, "a", "b"), {"direction": "LEFT"}, "BLMPOP", "LMPOP"),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "command", "instead"), BLOCKING)
async def test_blocking_commands_are_refused_naming_the_alternative(
    tmp_path: Path,
    redis_url: str,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    command: str,
    instead: str,
) -> None:
    kv = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"))
    await kv.rpush("a", "x")  # even with something to pop: no command polls KV
    dual = DualStore(kv, RedisBackend(aioredis.Redis.from_url(redis_url)))
    for store in (kv, dual):  # DualStore never reaches Redis, which would block
        with pytest.raises(errors.UnsupportedOperation) as refused:
            await getattr(store, name)(*args, **kwargs)
        message = str(refused.value)
        assert message.startswith(f"{command} is not supported on KV: polling would spend")
        assert f"use {instead}" in message
        assert isinstance(refused.value, NotImplementedError)
    assert await kv.lrange("a", 0, -1) == [b"x"]
    assert await kv.exists("b") == 0
    assert KVStore.command_specs()[name].kind == "write"
    await dual.aclose()


def test_blocking_commands_declare_their_keys() -> None:
    specs = KVStore.command_specs()
    assert specs["blpop"].keys_of({"keys": ["a", "b"]}) == ["a", "b"]
    assert specs["brpop"].keys_of({"keys": "a"}) == ["a"]
    assert specs["brpoplpush"].keys_of({"src": "a", "dst": "b"}) == ["a", "b"]
    assert specs["blmove"].keys_of({"first_list": "a", "second_list": "b"}) == ["a", "b"]
    assert specs["blmpop"].keys_of({"args": ("a", "b")}) == ["a", "b"]
    assert specs["lmpop"].keys_of({"args": ("a", "b")}) == ["a", "b"]
    assert specs["lmove"].keys_of({"first_list": "a", "second_list": "b"}) == ["a", "b"]


def test_signatures_are_redis_pys() -> None:
    names = "lpush rpush lpushx rpushx lpop rpop lmpop lmove rpoplpush linsert lpos lrange"
    names += " lindex llen ltrim lrem lset blpop brpop brpoplpush blmove blmpop"
    for name in names.split():
        ours = inspect.signature(getattr(KVStore, name)).parameters
        theirs = inspect.signature(getattr(aioredis.Redis, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
