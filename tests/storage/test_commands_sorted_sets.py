"""Sorted-set commands beyond what the differential test draws: argument parsing in Redis's
order (score bounds as ``strtod`` reads them, lex bounds, LIMIT, numkeys, WEIGHTS) and the
shapes of redis-py's answers, against a real Redis answer for answer; ZRANDMEMBER's random
answers by their properties; Redis 7.2's ZRANK WITHSCORE and Redis 8.8's AGGREGATE COUNT
(redis-server here is 7.0: hand-written expectations from the Redis documentation);
``zscan_iter``; TTLs of the stored results; and the blocking pops, refused."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from brainbot.kv import EmbeddedKV
from brainbot.storage import DualStore, KVStore, RedisBackend, errors
from tests.support.compare import outcome

INF = float("inf")


async def seed(store: Any) -> None:
    await store.zadd("z", {"a": 1, "b": 2.5, "c": 2.5, "d": INF, "e": -1, "f": 0.1})
    await store.zadd("lex", dict.fromkeys("abcde", 0))
    await store.zadd("mixed", {"a": 3, "b": 1, "c": 2, "d": 0, "e": -1})  # lex over scores
    await store.sadd("set", "a", "x")
    await store.set("s", "text")


KEYS = ("z", "lex", "mixed", "set", "s", "dest", "missing")

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    # score bounds: strtod reads blanks, hex, "inf"/"Infinity"; "" and "(" are 0; NaN is not
    ("zcount", ("z", "-inf", "+inf"), {}),
    ("zcount", ("z", "(1", 2.5), {}),
    ("zcount", ("z", " 1", "0x3"), {}),
    ("zcount", ("z", "1e0", "Infinity"), {}),
    ("zcount", ("z", "", "("), {}),
    ("zcount", ("z", "(", "1e400"), {}),  # overflow is infinity here
    ("zcount", ("z", "nan", 1), {}),
    ("zcount", ("z", "1 ", 1), {}),
    ("zcount", ("z", "1_0", 20), {}),
    ("zcount", ("missing", "x", 1), {}),  # the range is parsed before the key is looked up
    ("zcount", ("s", 1, 1), {}),
    ("zrangebyscore", ("z", "(0.1", "(inf"), {"withscores": True}),
    ("zrangebyscore", ("z", "-inf", "+inf", 1, 2), {}),
    ("zrangebyscore", ("z", "-inf", "+inf", -1, 5), {}),
    ("zrangebyscore", ("z", "-inf", "+inf", 2, -5), {}),
    ("zrangebyscore", ("z", "-inf", "+inf", "x", 1), {}),
    ("zrangebyscore", ("z", "-inf", "+inf", 1, None), {}),
    ("zrangebyscore", ("s", "x", 1), {}),
    ("zrevrangebyscore", ("z", "+inf", "(1"), {"withscores": True, "score_cast_func": str}),
    ("zrevrangebyscore", ("z", 2.5, "-inf", 1, 2), {"withscores": True}),
    ("zremrangebyscore", ("s", "x", 1), {}),
    ("zremrangebyscore", ("z", "(2.5", "+inf"), {}),
    # lex bounds
    ("zrangebylex", ("lex", "-", "+"), {}),
    ("zrangebylex", ("lex", "[b", "(d"), {}),
    ("zrangebylex", ("lex", "(", "+"), {}),
    ("zrangebylex", ("lex", "[", "[a"), {}),
    ("zrangebylex", ("lex", "-", "-"), {}),
    ("zrangebylex", ("lex", "+", "+"), {}),
    ("zrangebylex", ("lex", "[d", "[b"), {}),
    ("zrangebylex", ("lex", "a", "+"), {}),
    ("zrangebylex", ("lex", "-x", "+"), {}),
    ("zrangebylex", ("lex", "-", "+", 1, 2), {}),
    ("zrangebylex", ("lex", "-", "+", -1, 2), {}),
    ("zrangebylex", ("lex", "-", "+", 3, -1), {}),
    ("zrangebylex", ("lex", "-", "+", 1, None), {}),
    ("zrevrangebylex", ("lex", "+", "[b", 1, 2), {}),
    ("zrevrangebylex", ("lex", "(d", "-"), {}),
    ("zlexcount", ("lex", "[b", "+"), {}),
    ("zlexcount", ("s", "-", "+"), {}),
    ("zlexcount", ("s", "x", "+"), {}),
    ("zremrangebylex", ("lex", "(a", "[c"), {}),
    # a lex range over members of different scores: Redis's walk of a small set
    ("zrangebylex", ("mixed", "[b", "[d"), {}),
    ("zrangebylex", ("mixed", "-", "[c"), {}),
    ("zrangebylex", ("mixed", "[c", "+", 1, 3), {}),
    ("zrevrangebylex", ("mixed", "[d", "[b"), {}),
    ("zrevrangebylex", ("mixed", "+", "(a", 1, 2), {}),
    ("zlexcount", ("mixed", "(a", "+"), {}),
    ("zlexcount", ("mixed", "[z", "+"), {}),
    ("zremrangebylex", ("mixed", "[b", "[c"), {}),
    # ZRANGE: redis-py's checks, then Redis's (LIMIT by rank unless the count is -1)
    ("zrange", ("z", 0, -1), {"offset": 0, "num": -1}),
    ("zrange", ("z", 0, -1), {"offset": 1, "num": 1}),
    ("zrange", ("z", 0, -1), {"desc": True, "offset": 5, "num": -1}),
    ("zrange", ("z", "0", b"-2"), {"withscores": True}),
    ("zrange", ("z", "x", 1), {}),
    ("zrange", ("z", 1.0, 2), {}),
    ("zrange", ("z", 0, 1), {"offset": 1}),
    ("zrange", ("z", "-", "+"), {"bylex": True, "byscore": True}),
    ("zrange", ("z", "-", "+"), {"bylex": True, "withscores": True}),
    ("zrange", ("z", "+inf", "(1"), {"byscore": True, "desc": True, "withscores": True}),
    ("zrange", ("z", "(1", "+inf"), {"byscore": True, "offset": 1, "num": 2}),
    ("zrange", ("lex", "+", "[b"), {"bylex": True, "desc": True, "offset": 1, "num": 5}),
    ("zrange", ("s", "x", 1), {"byscore": True}),
    ("zrange", ("s", "0", 1), {"byscore": True}),
    ("zrange", ("missing", "[a", "x"), {"bylex": True}),
    ("zrevrange", ("z", 1, 3), {"withscores": True, "score_cast_func": int}),
    ("zrevrange", ("z", "1", "x"), {}),
    # ZRANGESTORE: the source must be a sorted set; an empty range deletes the destination
    ("zrangestore", ("dest", "z", 1, 3), {}),
    ("zrangestore", ("dest", "z", "(1", "+inf"), {"byscore": True, "offset": 1, "num": 1}),
    ("zrangestore", ("dest", "lex", "[c", "-"), {"bylex": True, "desc": True}),
    ("zrangestore", ("s", "missing", 0, -1), {}),
    ("zrangestore", ("dest", "set", 0, -1), {}),
    ("zrangestore", ("s", "z", 5, 1), {}),
    ("zrangestore", ("dest", "z", 0, 1), {"offset": 0, "num": 1}),
    # ZINCRBY and ZADD: values read as Redis's string2d (no blank, no overflow)
    ("zincrby", ("z", 1, "a"), {}),
    ("zincrby", ("z", "0x10", "new"), {}),
    ("zincrby", ("z", " 1", "a"), {}),
    ("zincrby", ("z", "", "a"), {}),
    ("zincrby", ("z", "1e400", "a"), {}),
    ("zincrby", ("z", "1e-400", "a"), {}),
    ("zincrby", ("z", -INF, "d"), {}),
    ("zincrby", ("s", "x", "a"), {}),  # the increment is parsed before the type is checked
    ("zincrby", ("s", 1, "a"), {}),
    ("zadd", ("z", {"a": "inf", "b": "-Infinity"}), {}),
    ("zadd", ("z", {"a": "nan"}), {}),
    ("zadd", ("z", {"a": True}), {}),
    ("zadd", ("z", {"a": 1}), {"gt": True, "lt": True}),
    ("zadd", ("z", {"a": 1, "b": 2}), {"incr": True}),
    ("zadd", ("z", {"d": -INF}), {"incr": True}),
    ("zadd", ("z", {"a": 5}), {"incr": True, "lt": True}),
    # pops
    ("zpopmin", ("z",), {}),
    ("zpopmax", ("z", 2), {}),
    ("zpopmin", ("z", "x"), {}),
    ("zpopmin", ("s", 0), {}),  # count 0 still checks the type
    ("zpopmin", ("s", -1), {}),  # the count is checked first
    ("zpopmax", ("missing",), {}),
    ("zpopmax", ("z", 0), {}),
    # ZMPOP: what redis-py sends (numkeys, keys, MIN|MAX, COUNT), read as Redis reads it
    ("zmpop", (2, ["missing", "z"]), {"min": True}),
    ("zmpop", (2, ["missing", "z"]), {"max": True, "count": 10}),
    ("zmpop", (2, ["missing", "nothing"]), {"min": True}),
    ("zmpop", (2, ["s", "z"]), {"min": True}),
    ("zmpop", (2, ["z", "s"]), {"min": True}),  # stops at the first sorted set
    ("zmpop", (1, ["z"]), {"min": True, "max": True}),
    ("zmpop", (1, ["z"]), {}),
    ("zmpop", (0, ["z"]), {"min": True}),
    ("zmpop", ("x", ["z"]), {"min": True}),
    ("zmpop", (0, []), {"min": True}),
    ("zmpop", (1, ["z", "lex"]), {"min": True}),
    ("zmpop", (3, ["z", "lex"]), {"min": True}),
    ("zmpop", (1, ["z", "max"]), {"min": True}),  # a key read as the side
    ("zmpop", (1, ["z"]), {"min": True, "count": 0}),
    ("zmpop", (1, ["z"]), {"min": True, "count": "x"}),
    # ZMSCORE, ZRANK
    ("zmscore", ("z", ["a", "nope", "d"]), {}),
    ("zmscore", ("missing", ["a"]), {}),
    ("zmscore", ("s", ["a"]), {}),
    ("zmscore", ("z", []), {}),
    ("zrank", ("z", "c"), {}),
    ("zrevrank", ("z", "c"), {}),
    ("zrank", ("z", "nope"), {}),
    ("zrank", ("s", "nope"), {}),
    # ZUNION/ZINTER/ZDIFF: sets are inputs too; WEIGHTS; NaN products count as 0
    ("zunion", (["z", "set"],), {"withscores": True}),
    ("zunion", ({"z": 2, "set": 0},), {"withscores": True, "score_cast_func": str}),
    ("zunion", ({"z": 0},), {"withscores": True}),  # inf * 0
    ("zunion", ({"z": INF, "mixed": -INF},), {"withscores": True}),  # inf + -inf
    ("zunion", ({"z": 1, "set": "x"},), {}),
    ("zunion", ({"z": 1, "s": "x"},), {}),  # the type first, then the weights
    ("zunion", ({"z": "nan"},), {}),
    ("zunion", (["z", "mixed"],), {"aggregate": "min", "withscores": True}),
    ("zunion", (["z", "mixed"],), {"aggregate": "Max", "withscores": True}),
    ("zunion", (["z"],), {"aggregate": "avg"}),
    ("zunion", ([],), {}),
    ("zunion", ([],), {"withscores": True}),
    ("zinter", (["z", "set", "mixed"],), {"withscores": True}),
    ("zinter", ({"z": 2, "mixed": 3},), {"withscores": True}),
    ("zinter", ({"z": -INF, "mixed": INF},), {"aggregate": "max", "withscores": True}),
    ("zinter", (["z", "missing"],), {}),
    ("zdiff", (["z", "set", "mixed"],), {"withscores": True}),
    ("zdiff", (["z", "missing"],), {}),
    ("zdiff", (["missing", "z"],), {}),
    ("zdiff", ([],), {}),
    ("zdiff", (["s"],), {}),
    ("zintercard", (2, ["z", "set"]), {}),
    ("zintercard", (3, ["z", "mixed", "lex"]), {"limit": 2}),
    ("zintercard", (2, ["z", "mixed"]), {"limit": -1}),
    ("zintercard", (2, ["z", "mixed"]), {"limit": "x"}),
    ("zintercard", (0, []), {}),
    ("zintercard", (1, ["z", "mixed"]), {}),
    ("zintercard", (3, ["z", "mixed"]), {}),
    ("zintercard", ("x", ["z"]), {}),
    ("zintercard", (2, ["z", "s"]), {"limit": "x"}),  # the type first
    ("zinterstore", ("dest", ["z", "mixed"]), {"aggregate": "MIN"}),
    ("zinterstore", ("s", ["z", "missing"]), {}),  # an empty result deletes the destination
    ("zinterstore", ("dest", []), {}),
    ("zinterstore", ("dest", []), {"aggregate": "sum"}),
    ("zunionstore", ("s", {"z": 2, "set": -1}), {"aggregate": "max"}),  # any old type goes
    ("zunionstore", ("z", ["z", "z"]), {}),
    ("zdiffstore", ("dest", ["z", "mixed"]), {}),
    ("zdiffstore", ("dest", []), {}),
    ("zdiffstore", ("dest", ["z", "s"]), {}),
    # ZSCAN: the cursor is checked first; everything in one page from a small set
    ("zscan", ("z",), {}),
    ("zscan", ("z", 7), {"match": "[a-c]*", "count": 1}),
    ("zscan", ("z",), {"score_cast_func": str}),
    ("zscan", ("z", "x"), {}),
    ("zscan", ("z", "-1"), {}),
    ("zscan", ("z", ""), {}),
    ("zscan", ("z", 0), {"count": 0}),
    ("zscan", ("missing", 0), {"count": 0}),
    ("zscan", ("s", "x"), {}),
    ("zscan", ("s", 0), {}),
    ("zscan_iter", ("z",), {"match": "?"}),
    # ZRANDMEMBER: the answers that are not random
    ("zrandmember", ("missing",), {}),
    ("zrandmember", ("missing", 2), {}),
    ("zrandmember", ("z", 0), {}),
    ("zrandmember", ("z", 10), {"withscores": True}),  # the whole set, highest first
    ("zrandmember", ("z",), {"withscores": True}),
    ("zrandmember", ("s", 0), {}),
    ("zrandmember", ("missing", "x"), {}),
    ("zrandmember", ("z", -(2**63)), {}),
    ("zrandmember", ("z", -(2**62)), {"withscores": True}),
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
        for key in KEYS:  # and the same effect
            assert await store.type(key) == await redis_client.type(key)
            if await redis_client.type(key) == b"zset":
                ours = await store.zrange(key, 0, -1, withscores=True)
                assert ours == await redis_client.zrange(key, 0, -1, withscores=True)


async def test_decoded_answers_keep_redis_pys_score_shapes(tmp_path: Path, redis_url: str) -> None:
    """With decode_responses, members are text; scores redis-py re-encodes stay bytes."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await redis.flushdb()
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True) as store:
        for client in (store, redis):
            await client.zadd("z", {"é": 0.1, "b": 2, "c": INF})
        calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("zrange", ("z", 0, -1), {"withscores": True, "score_cast_func": repr}),
            ("zscan", ("z",), {"score_cast_func": repr}),
            ("zdiff", (["z"],), {"withscores": True}),
            ("zrandmember", ("z", 5), {"withscores": True}),
            ("zunion", (["z"],), {"withscores": True, "score_cast_func": repr}),
            ("zpopmin", ("z",), {}),
            ("zmpop", (1, ["z"]), {"min": True}),
        ]
        for name, args, kwargs in calls:
            assert await outcome(store, name, args, kwargs) == await outcome(
                redis, name, args, kwargs
            ), name
    await redis.flushdb()
    await redis.aclose()


async def test_score_cast_func_falls_back_to_float_as_redis_py_does(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.zadd("z", {"a": 2.5, "b": 3, "c": -0.0})
        assert await store.zrange("z", 0, -1, withscores=True, score_cast_func=int) == [
            (b"c", 0),
            (b"a", 2),  # int(b"2.5") fails: int(2.5)
            (b"b", 3),
        ]
        # a compact sorted set keeps -0 as 0
        assert await store.zrange("z", 0, 0, withscores=True, score_cast_func=bytes) == [
            (b"c", b"0")
        ]
        assert await store.zincrby("z", -0.0, "new") == 0.0
        await store.zadd("z", {"i": INF})
        with pytest.raises(OverflowError):
            await store.zrange("z", -1, -1, withscores=True, score_cast_func=int)


async def test_zrandmember_answers_random_members_by_redis_rules(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        members = {f"m{i}".encode(): float(i % 4) for i in range(12)}
        await store.zadd("z", members)
        order = [m for m, _ in await store.zrange("z", 0, -1, withscores=True)]
        seen = set()
        for _ in range(60):
            one = await store.zrandmember("z")
            assert one in members
            seen.add(one)
            some = await store.zrandmember("z", 5)
            assert len(some) == len(set(some)) == 5
            assert some == sorted(some, key=order.index)  # distinct, in the set's order
        assert len(seen) > 6
        repeats = await store.zrandmember("z", -50)
        assert len(repeats) == 50
        assert set(repeats) <= set(members)
        assert len(set(repeats)) < 50  # a negative count allows repeats
        flat = await store.zrandmember("z", -3, withscores=True)
        assert len(flat) == 6
        for member, score in zip(flat[::2], flat[1::2], strict=True):
            assert float(score) == members[member]
            assert isinstance(score, bytes)
        assert await store.zrandmember("z", 20) == order[::-1]  # all of it: Redis's order
        assert await store.zrandmember("missing") is None


async def test_zrank_withscore_as_redis_7_2(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.zadd("z", {"a": 1, "b": 2.5, "c": 2.5})
        assert await store.zrank("z", "b", withscore=True) == [1, 2.5]
        assert await store.zrevrank("z", "b", withscore=True) == [1, 2.5]
        assert await store.zrevrank("z", "a", withscore=True, score_cast_func=str) == [
            2,
            "b'1'",
        ]
        assert await store.zrank("z", "nope", withscore=True) is None
        assert await store.zrank("missing", "a", withscore=True) is None


async def test_aggregate_count_as_redis_8_8(tmp_path: Path) -> None:
    """Each input adds its weight for every member it holds, whatever the score."""
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.zadd("x", {"a": 10, "b": 20})
        await store.zadd("y", {"b": 5, "c": 7})
        await store.sadd("s", "b", "c")
        assert await store.zunion(["x", "y", "s"], aggregate="count", withscores=True) == [
            (b"a", 1.0),
            (b"c", 2.0),
            (b"b", 3.0),
        ]
        assert await store.zinter({"x": 2, "y": 3}, aggregate="COUNT", withscores=True) == [
            (b"b", 5.0)
        ]
        assert await store.zunionstore("d", {"x": 1, "y": 0.5}, aggregate="count") == 3
        assert await store.zrange("d", 0, -1, withscores=True) == [
            (b"c", 0.5),
            (b"a", 1.0),
            (b"b", 1.5),
        ]


async def test_stored_results_have_no_ttl_and_pops_keep_theirs(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.zadd("src", {"a": 1, "b": 2, "c": 3})
        await store.zadd("dest", {"old": 1})
        await store.expire("src", 500)
        await store.expire("dest", 500)
        assert await store.zunionstore("dest", ["src"]) == 3
        assert await store.ttl("dest") == -1
        await store.expire("dest", 500)
        assert await store.zrangestore("dest", "src", 0, 0) == 1
        assert await store.ttl("dest") == -1
        assert await store.zpopmin("src") == [(b"a", 1.0)]
        assert await store.zmpop(1, ["src"], max=True) == [b"src", [[b"c", b"3"]]]
        assert await store.zremrangebyrank("src", 5, 9) == 0
        assert 400 < await store.ttl("src") <= 500
        assert await store.zdiffstore("dest", ["src", "src"]) == 0
        assert await store.exists("dest") == 0


async def test_a_wrong_type_aborts_a_store_before_anything_is_written(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.zadd("dest", {"keep": 1})
        await store.zadd("x", {"a": 1})
        await store.set("s", "text")
        for call in (
            store.zunionstore("dest", ["x", "s"]),
            store.zinterstore("dest", {"x": 1, "s": 2}),
            store.zdiffstore("dest", ["x", "s"]),
            store.zrangestore("dest", "s", 0, -1),
            store.zmpop(2, ["s", "x"], min=True),
        ):
            with pytest.raises(errors.WrongTypeError):
                await call
        assert await store.zrange("dest", 0, -1) == [b"keep"]
        assert await store.zcard("x") == 1


async def test_zscan_iter_yields_every_member_with_its_score(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True) as store:
        members = {f"m{i}": float(i) for i in range(300)}
        await store.zadd("z", members)
        pairs = [p async for p in store.zscan_iter("z", count=10)]
        assert dict(pairs) == members
        assert [p async for p in store.zscan_iter("z", match="m29?")] == [
            (f"m29{i}", 290.0 + i) for i in range(10)
        ]
        texts = [p async for p in store.zscan_iter("z", match="m1", score_cast_func=repr)]
        assert texts == [("m1", "'1'")]  # the reply's text, decoded
        assert [p async for p in store.zscan_iter("missing")] == []
        assert await store.zscan("z", cursor=123, match="m7") == (0, [("m7", 7.0)])


async def test_member_globs_work_on_bytes(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.zadd("z", {b"\xff\x00": 1, "é": 2, "x": 3})
        assert await store.zscan("z", match=b"?\x00") == (0, [(b"\xff\x00", 1.0)])
        assert await store.zscan("z", match="??") == (0, [(b"\xff\x00", 1.0), ("é".encode(), 2.0)])
        assert await store.zscan("z", match="[^x]*") == (
            0,
            [(b"\xff\x00", 1.0), ("é".encode(), 2.0)],
        )


BLOCKING = [
    ("bzpopmin", (["a", "b"],), {"timeout": 1}, "BZPOPMIN", "ZPOPMIN"),
    ("bzpopmax", ("a",), {}, "BZPOPMAX", "ZPOPMAX"),
    ("bzmpop", (1, 2, ["a", "b"]), {"min": True}, "BZMPOP", "ZMPOP"),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "command", "instead"), BLOCKING)
async def test_blocking_pops_are_refused_naming_the_alternative(
    tmp_path: Path,
    redis_url: str,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    command: str,
    instead: str,
) -> None:
    kv = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"))
    await kv.zadd("a", {"x": 1})  # even with something to pop: no command polls KV
    dual = DualStore(kv, RedisBackend(aioredis.Redis.from_url(redis_url)))
    for store in (kv, dual):  # DualStore never reaches Redis, which would block
        with pytest.raises(errors.UnsupportedOperation) as refused:
            await getattr(store, name)(*args, **kwargs)
        assert str(refused.value) == (
            f"{command} is not supported on KV: polling would spend KV's 1 write/s per key "
            f"and the API budget; use {instead} instead"
        )
        assert isinstance(refused.value, NotImplementedError)
    assert await kv.zrange("a", 0, -1) == [b"x"]
    assert KVStore.command_specs()[name].kind == "write"
    await dual.aclose()


def test_multi_key_commands_declare_their_keys() -> None:
    specs = KVStore.command_specs()
    assert specs["zunionstore"].keys_of({"dest": "d", "keys": {"a": 1, "b": 2}}) == [
        "d",
        "a",
        "b",
    ]
    assert specs["zinterstore"].kind == "write"
    assert specs["zdiffstore"].keys_of({"dest": "d", "keys": ["a"]}) == ["d", "a"]
    assert specs["zrangestore"].keys_of({"dest": "d", "name": "a"}) == ["d", "a"]
    assert specs["zmpop"].keys_of({"num_keys": 2, "keys": ["a", "b"]}) == ["a", "b"]
    assert specs["zmpop"].kind == "write"
    assert specs["zunion"].kind == specs["zintercard"].kind == "read"
    assert specs["bzpopmin"].keys_of({"keys": "a"}) == ["a"]
    assert specs["bzmpop"].keys_of({"keys": ["a", "b"]}) == ["a", "b"]


def test_signatures_are_redis_pys() -> None:
    names = (
        "zadd zincrby zrem zremrangebyrank zremrangebyscore zremrangebylex zpopmin zpopmax"
        " zmpop zinterstore zunionstore zdiffstore zrangestore zrange zrevrange zrangebyscore"
        " zrevrangebyscore zrangebylex zrevrangebylex zcount zlexcount zscore zmscore zcard"
        " zrank zrevrank zrandmember zinter zunion zdiff zintercard zscan zscan_iter bzpopmin"
        " bzpopmax bzmpop"
    )
    for name in names.split():
        ours = inspect.signature(getattr(KVStore, name)).parameters
        theirs = inspect.signature(getattr(aioredis.Redis, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
