"""KVStore against real Redis: Hypothesis draws sequences of Redis operations, runs each on
redis-py (real redis-server) and on KVStore (embedded; REST client to `brainbot kv serve`),
and asserts the same results and the same final state.

Documented differences are modelled, not skipped: TTLs are compared within a second (time
passes between the two runs), and the order of KEYS/SCAN is Redis's to choose (sorted)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainbot.storage import KVStore, errors

KEYS = st.sampled_from(["a", "b"])
VALUES = st.sampled_from([b"", b"x", b"\xff\x00", b"1", b"10", b"-3", "é🙂", 7, 2.5])
FIELDS = st.sampled_from([b"f", b"g", "h"])
INDEX = st.integers(-4, 4)
FLOATS = st.sampled_from([0.5, 1.25, -2.0, 3.0])


def op(
    name: str, *args: st.SearchStrategy[Any], **kwargs: st.SearchStrategy[Any]
) -> st.SearchStrategy[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    return st.tuples(st.just(name), st.tuples(*args), st.fixed_dictionaries(kwargs))


SET_OPTIONS = st.sampled_from(
    [{}, {"ex": 100}, {"px": 200_000}, {"nx": True}, {"xx": True}, {"keepttl": True}, {"get": True}]
)
STRING_OPS = [
    st.tuples(st.just("set"), st.tuples(KEYS, VALUES), SET_OPTIONS),
    op("get", KEYS),
    op("getdel", KEYS),
    op("setnx", KEYS, VALUES),
    op("strlen", KEYS),
    op("mget", st.lists(KEYS, min_size=1, max_size=3)),
    op("mset", st.dictionaries(KEYS, VALUES, min_size=1, max_size=2)),
    op("incr", KEYS),
    op("incrby", KEYS, st.integers(-5, 5)),
    op("decr", KEYS),
    op("decrby", KEYS, st.integers(-5, 5)),
    op("incrbyfloat", KEYS, FLOATS),
    op("append", KEYS, VALUES),
]
FLAGS = st.sampled_from(
    [{}, {"nx": True}, {"xx": True}, {"gt": True}, {"lt": True}, {"nx": True, "gt": True}]
)
EXPIRY_OPS = [
    st.tuples(st.just("expire"), st.tuples(KEYS, st.sampled_from([100, 200, 0, -5])), FLAGS),
    st.tuples(st.just("expireat"), st.tuples(KEYS, st.sampled_from([1, 4_000_000_000])), FLAGS),
    op("pexpireat", KEYS, st.just(4_100_000_000_000)),
    op("expire", KEYS, st.sampled_from([100, 200])),
    op("pexpire", KEYS, st.just(150_000)),
    op("persist", KEYS),
    op("ttl", KEYS),
    op("pttl", KEYS),
]
PUSHES = [op("lpush", KEYS, VALUES, VALUES), op("rpush", KEYS, VALUES)]
LIST_OPS = [
    *PUSHES,
    *PUSHES,
    *PUSHES,  # weighted: lists must grow for the deep cases
    op("lpop", KEYS),
    op("rpop", KEYS),
    op("lpop", KEYS, st.integers(1, 3)),
    op("rpop", KEYS, st.integers(0, 3)),
    op("lrange", KEYS, INDEX, INDEX),
    op("lindex", KEYS, INDEX),
    op("llen", KEYS),
    op("ltrim", KEYS, INDEX, INDEX),
    op("lrem", KEYS, st.integers(-2, 2), VALUES),
    op("lset", KEYS, INDEX, VALUES),
]
HASH_OPS = [
    op("hset", KEYS, FIELDS, VALUES),
    op("hset", KEYS, mapping=st.dictionaries(FIELDS, VALUES, min_size=1, max_size=2)),
    op("hget", KEYS, FIELDS),
    op("hmget", KEYS, st.lists(FIELDS, min_size=1, max_size=3)),
    op("hgetall", KEYS),
    op("hdel", KEYS, FIELDS),
    op("hexists", KEYS, FIELDS),
    op("hincrby", KEYS, FIELDS, st.integers(-3, 3)),
    op("hkeys", KEYS),
    op("hvals", KEYS),
    op("hlen", KEYS),
]
SET_OPS = [
    op("sadd", KEYS, VALUES, VALUES),
    op("srem", KEYS, VALUES),
    op("smembers", KEYS),
    op("sismember", KEYS, VALUES),
    op("scard", KEYS),
]
ZSET_OPS = [
    op("zadd", KEYS, st.dictionaries(FIELDS, FLOATS, min_size=1, max_size=2)),
    op("zadd", KEYS, st.dictionaries(FIELDS, FLOATS, min_size=1, max_size=1), incr=st.just(True)),
    op(
        "zadd",
        KEYS,
        st.dictionaries(FIELDS, FLOATS, min_size=1, max_size=2),
        ch=st.just(True),
        xx=st.booleans(),
    ),
    op("zrange", KEYS, INDEX, INDEX, withscores=st.booleans(), desc=st.booleans()),
    op("zrem", KEYS, FIELDS),
    op("zscore", KEYS, FIELDS),
    op("zcard", KEYS),
]
KEYSPACE_OPS = [
    op("delete", KEYS, KEYS),
    op("exists", KEYS, KEYS),
    op("type", KEYS),
    op("rename", KEYS, KEYS),
    op("keys", st.sampled_from(["*", "a*", "[ab]", "?"])),
    op(
        "scan_iter",
        match=st.sampled_from(["*", "[^a]*"]),
        _type=st.sampled_from([None, "string", "list", "hash"]),
    ),
]
FAMILIES = [STRING_OPS, LIST_OPS, HASH_OPS, SET_OPS, ZSET_OPS]
ALL_OPS = [o for family in FAMILIES for o in family] + EXPIRY_OPS + KEYSPACE_OPS
# Each example dwells on one type (deep states: long lists, many fields), with expiry and
# keyspace commands mixed in; one family in six mixes every type (WRONGTYPE, rename, ...).
MIXES = [[*family, *EXPIRY_OPS, *KEYSPACE_OPS] for family in FAMILIES] + [ALL_OPS]
SEQUENCES = st.sampled_from(MIXES).flatmap(
    lambda mix: st.lists(st.one_of(*mix), min_size=10, max_size=40)
)


async def run(store: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        if name == "scan_iter":
            return ("ok", sorted([k async for k in store.scan_iter(**kwargs)]))
        result = await getattr(store, name)(*args, **kwargs)
        if name == "keys":
            result = sorted(result)
        return ("ok", result)
    except (redis.exceptions.ResponseError, errors.ResponseError) as exc:
        return ("ResponseError", str(exc))
    except (redis.exceptions.DataError, errors.DataError) as exc:
        return ("DataError", type(exc).__name__)


def same(name: str, redis_result: Any, kv_result: Any) -> bool:
    if name in ("ttl", "pttl") and redis_result[0] == kv_result[0] == "ok":
        r, k = redis_result[1], kv_result[1]
        return r == k or (r >= 0 and k >= 0 and abs(r - k) <= (1 if name == "ttl" else 1000))
    if redis_result[0] == kv_result[0] == "DataError":
        return True  # both refused the input; the class names differ by library
    return bool(redis_result == kv_result)


async def dump(store: Any) -> dict[bytes, Any]:
    state: dict[bytes, Any] = {}
    for key in sorted(await store.keys("*")):
        kind = await store.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value, size = {
            "string": (store.get, store.strlen),
            "list": (lambda k: store.lrange(k, 0, -1), store.llen),
            "hash": (store.hgetall, store.hlen),
            "set": (store.smembers, store.scard),
            "zset": (lambda k: store.zrange(k, 0, -1, withscores=True), store.zcard),
        }[kind]
        state[key] = (kind, await value(key), await size(key), await store.ttl(key) > 0)
    return state


def test_kvstore_answers_like_redis(store_factory, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    examples = 300 if store_factory.backend == "embedded" else 80

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(ops=SEQUENCES)
    def check(ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        asyncio.run(replay(store_factory, redis_url, ops))

    check()


async def replay(store_factory, redis_url: str, ops) -> None:  # type: ignore[no-untyped-def]
    reference = aioredis.Redis.from_url(redis_url)
    await reference.flushdb()
    store = store_factory()
    try:
        for name, args, kwargs in ops:
            expected = await run(reference, name, args, kwargs)
            got = await run(store, name, args, kwargs)
            assert same(name, expected, got), (name, args, kwargs, expected, got)
        assert await dump(store) == await dump(reference)
        # and what was persisted, read by a fresh store without this one's memory:
        fresh = KVStore(store.namespace, recent_window=0)
        assert await dump(fresh) == await dump(reference)
    finally:
        await store.aclose()
        await reference.flushdb()
        await reference.aclose()
