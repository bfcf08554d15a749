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
    # expiry options as text, as redis-py passes them on ("5" for px it refuses itself)
    st.tuples(
        st.just("set"),
        st.tuples(KEYS, VALUES),
        st.sampled_from([{"ex": "100"}, {"exat": "4000000000"}, {"exat": "x"}, {"px": "5"}]),
    ),
    op("getset", KEYS, VALUES),
    st.tuples(
        st.just("getex"),
        st.tuples(KEYS),
        st.sampled_from(
            [
                {},
                {"ex": 100},
                {"ex": "150"},
                {"px": 200_000},
                {"exat": 4_000_000_000},
                {"pxat": 4_100_000_000_000},
                {"exat": 1},  # in the past: deletes
                {"persist": True},
                {"ex": 0},
                {"exat": "x"},
                {"ex": 100, "persist": True},
            ]
        ),
    ),
    op("setex", KEYS, st.sampled_from([100, "200", 0, "x", 1.5]), VALUES),
    op("psetex", KEYS, st.sampled_from([150_000, "-1"]), VALUES),
    op("msetnx", st.dictionaries(KEYS, VALUES, min_size=1, max_size=2)),
    op("getrange", KEYS, INDEX, INDEX),
    op("getrange", KEYS, st.sampled_from(["0", "x", -10]), st.sampled_from(["-1", -10])),
    op("substr", KEYS, INDEX),
    op("setrange", KEYS, st.sampled_from([0, 1, 3, 6, -1, "2"]), VALUES),
    st.tuples(
        st.just("lcs"),
        st.tuples(KEYS, KEYS),
        st.sampled_from(
            [
                {},
                {"len": True},
                {"idx": True},
                {"idx": True, "withmatchlen": True},
                {"idx": True, "minmatchlen": 2},
                {"idx": True, "minmatchlen": "x"},
                {"len": True, "idx": True},
            ]
        ),
    ),
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
    # times as text, as redis-py passes them on; errors of Redis's order and range
    op("expire", KEYS, st.sampled_from(["100", "1.5", "x", 2**62])),
    op("pexpire", KEYS, st.sampled_from(["150000", 2**63 - 1])),
    op("expireat", KEYS, st.sampled_from(["4000000000", "1"])),
    op("pexpireat", KEYS, st.just("4100000000000")),
    op("expire", KEYS, st.just("x"), gt=st.just(True), lt=st.just(True)),
    # EXPIRETIME/PEXPIRETIME are compared in test_commands_strings.py: after a relative
    # EXPIRE the two backends' absolute times differ by the time between their calls
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
    op("lpushx", KEYS, VALUES, VALUES),
    op("rpushx", KEYS, VALUES),
    op("linsert", KEYS, st.sampled_from(["BEFORE", "after", "middle"]), VALUES, VALUES),
    op(
        "lpos",
        KEYS,
        VALUES,
        rank=st.sampled_from([None, 1, 2, -1, -2, 0]),
        count=st.sampled_from([None, 0, 1, 2, -1]),
        maxlen=st.sampled_from([None, 0, 2, -1]),
    ),
    op(
        "lmove",
        KEYS,
        KEYS,
        st.sampled_from(["LEFT", "right", "up"]),
        st.sampled_from(["Left", "RIGHT"]),
    ),
    op("rpoplpush", KEYS, KEYS),
    st.tuples(
        st.just("lmpop"),
        st.lists(KEYS, min_size=1, max_size=2).map(lambda keys: (len(keys), *keys)),
        st.fixed_dictionaries(
            {"direction": st.sampled_from(["LEFT", "right"]), "count": st.sampled_from([1, 2, 5])}
        ),
    ),
    op(  # numkeys that disagrees with the keys, bad sides and counts: Redis's errors
        "lmpop",
        st.sampled_from([0, 2, "x"]),
        KEYS,
        direction=st.sampled_from(["left", "middle"]),
        count=st.sampled_from([1, 0, "3"]),
    ),
    # indexes as text, as redis-py passes them through ("x" and "01" are not integers)
    op("lindex", KEYS, st.sampled_from(["0", b"-1", "x", "01"])),
    op("lrange", KEYS, st.sampled_from(["0", "-2", "x"]), st.sampled_from([b"-1", "1"])),
    op("ltrim", KEYS, st.sampled_from(["1", "x"]), INDEX),
    op("lset", KEYS, st.sampled_from(["0", "-1", "x"]), VALUES),
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
    op("hsetnx", KEYS, FIELDS, VALUES),
    op("hincrbyfloat", KEYS, FIELDS, FLOATS),
    op("hincrbyfloat", KEYS, FIELDS, st.sampled_from(["1e2", "-0.5", "x", "inf"])),
    op("hstrlen", KEYS, FIELDS),
    op("hmset", KEYS, st.dictionaries(FIELDS, VALUES, max_size=2)),
    # HRANDFIELD is random but for these: 0, and a count over the size (the whole hash,
    # in order); the rest is tested in test_commands_hashes.py
    op("hrandfield", KEYS, st.sampled_from([0, 5, "x"]), st.booleans()),
    op(
        "hscan",
        KEYS,
        st.sampled_from([0, "0", "x"]),
        match=st.sampled_from([None, "*", "f*", "[gh]"]),
        count=st.sampled_from([None, 1, 10, 0]),
    ),
]
KEY_LISTS = st.lists(KEYS, min_size=1, max_size=3)
SET_OPS = [
    op("sadd", KEYS, VALUES, VALUES),
    op("sadd", KEYS, VALUES, VALUES),  # weighted: sets must grow for the combining commands
    op("srem", KEYS, VALUES),
    op("smembers", KEYS),
    op("sismember", KEYS, VALUES),
    op("smismember", KEYS, st.lists(VALUES, max_size=3)),
    op("scard", KEYS),
    op("smove", KEYS, KEYS, VALUES),
    *[op(name, st.lists(KEYS, max_size=3)) for name in ("sdiff", "sinter", "sunion")],
    *[op(name, KEYS, KEYS) for name in ("sdiff", "sinter", "sunion")],
    *[op(name, KEYS, KEY_LISTS) for name in ("sdiffstore", "sinterstore", "sunionstore")],
    op("sunionstore", KEYS, KEYS, KEYS),
    st.tuples(
        st.just("sintercard"),
        KEY_LISTS.map(lambda keys: (len(keys), keys)),
        st.fixed_dictionaries({"limit": st.integers(0, 3)}),
    ),
    op("sintercard", st.integers(0, 5), KEY_LISTS, limit=st.sampled_from([0, 1, -1])),
    # random answers are tested in test_commands_sets.py; these draws are deterministic:
    op("spop", KEYS, st.sampled_from([0, -1, 1.5])),
    op("srandmember", KEYS, st.sampled_from([0, "x", -(2**63)])),
]
ZSCORES = st.sampled_from(
    ["-inf", "+inf", -2.0, "(-2", 0.5, "(0.5", 1.25, "(1.25", 3, "(3", "", "(", "x", "nan"]
)
ZLEX = st.sampled_from(["-", "+", "[f", "(f", "[g", "(g", "[h", "(h", "[", "(", "f", "+h"])
ZOFFSET = st.integers(-1, 2)
ZLIMIT = st.one_of(  # LIMIT offset count, or not; one without the other is redis-py's DataError
    st.just({}),
    *[st.fixed_dictionaries({"offset": ZOFFSET, "num": ZOFFSET}) for _ in range(2)],
    st.sampled_from([{"offset": 1}, {"num": 1}]),
)
ZSTART_NUM = st.one_of(
    st.just({}),
    *[st.fixed_dictionaries({"start": ZOFFSET, "num": ZOFFSET}) for _ in range(2)],
    st.sampled_from([{"start": 1}, {"num": 1}]),
)
ZKEYS = st.lists(KEYS, min_size=0, max_size=3)  # none: Redis's arity error
ZWEIGHTED = st.dictionaries(
    KEYS, st.sampled_from([1, 2, -1.5, 0, float("inf"), "x"]), min_size=1, max_size=2
)
ZSOURCES = st.one_of(ZKEYS, ZWEIGHTED)
ZAGGREGATE = st.sampled_from([None, "sum", "MIN", "max", "avg"])
ZSIDES = st.sampled_from(
    [{"min": True}, {"max": True}, {"min": True, "count": 2}, {"max": True, "count": 0}, {}]
)


def zop(
    name: str,
    args: tuple[st.SearchStrategy[Any], ...],
    kwargs: dict[str, st.SearchStrategy[Any]],
    extra: st.SearchStrategy[dict[str, Any]],
) -> st.SearchStrategy[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """An op whose keyword arguments also take one of ``extra``'s dictionaries."""
    keywords = st.builds(
        lambda fixed, more: {**fixed, **more}, st.fixed_dictionaries(kwargs), extra
    )
    return st.tuples(st.just(name), st.tuples(*args), keywords)


def zadds() -> list[st.SearchStrategy[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
    """The ops that grow sorted sets (new objects each call: one_of drops repeats)."""
    return [
        op("zadd", KEYS, st.dictionaries(FIELDS, FLOATS, min_size=1, max_size=2)),
        op("zadd", KEYS, st.dictionaries(FIELDS, FLOATS, min_size=3, max_size=3)),
        op(
            "zadd",
            KEYS,
            st.dictionaries(FIELDS, FLOATS, min_size=1, max_size=1),
            incr=st.just(True),
        ),
        op(
            "zadd",
            KEYS,
            st.dictionaries(FIELDS, FLOATS, min_size=1, max_size=2),
            ch=st.just(True),
            xx=st.booleans(),
        ),
        op("zincrby", KEYS, FLOATS, FIELDS),
    ]


ZSET_OPS = [
    *[o for _ in range(4) for o in zadds()],  # weighted: sets must grow for the deep cases
    op("zrange", KEYS, INDEX, INDEX, withscores=st.booleans(), desc=st.booleans()),
    zop("zrange", (KEYS, INDEX, INDEX), {"desc": st.booleans()}, ZLIMIT),
    zop(
        "zrange",
        (KEYS, ZSCORES, ZSCORES),
        {"byscore": st.just(True), "desc": st.booleans(), "withscores": st.booleans()},
        ZLIMIT,
    ),
    zop("zrange", (KEYS, ZLEX, ZLEX), {"bylex": st.just(True), "desc": st.booleans()}, ZLIMIT),
    zop(  # redis-py's DataError
        "zrange",
        (KEYS, ZLEX, ZLEX),
        {"bylex": st.just(True)},
        st.sampled_from([{"withscores": True}, {"byscore": True}]),
    ),
    op("zrevrange", KEYS, INDEX, INDEX, withscores=st.booleans()),
    zop("zrangebyscore", (KEYS, ZSCORES, ZSCORES), {"withscores": st.booleans()}, ZSTART_NUM),
    zop("zrevrangebyscore", (KEYS, ZSCORES, ZSCORES), {"withscores": st.booleans()}, ZSTART_NUM),
    zop("zrangebylex", (KEYS, ZLEX, ZLEX), {}, ZSTART_NUM),
    zop("zrevrangebylex", (KEYS, ZLEX, ZLEX), {}, ZSTART_NUM),
    op("zcount", KEYS, ZSCORES, ZSCORES),
    op("zlexcount", KEYS, ZLEX, ZLEX),
    op("zrem", KEYS, FIELDS),
    op("zremrangebyrank", KEYS, INDEX, INDEX),
    op("zremrangebyscore", KEYS, ZSCORES, ZSCORES),
    op("zremrangebylex", KEYS, ZLEX, ZLEX),
    op("zpopmin", KEYS),
    op("zpopmax", KEYS, st.integers(-1, 3)),
    st.tuples(
        st.just("zmpop"), st.tuples(st.just(2), st.lists(KEYS, min_size=2, max_size=2)), ZSIDES
    ),
    st.tuples(st.just("zmpop"), st.tuples(st.integers(0, 3), ZKEYS), ZSIDES),
    op("zscore", KEYS, FIELDS),
    op("zmscore", KEYS, st.lists(FIELDS, min_size=1, max_size=3)),
    op("zcard", KEYS),
    op("zrank", KEYS, FIELDS),
    op("zrevrank", KEYS, FIELDS),
    op("zinter", ZSOURCES, aggregate=ZAGGREGATE, withscores=st.booleans()),
    op(
        "zunion",
        ZSOURCES,
        aggregate=ZAGGREGATE,
        withscores=st.booleans(),
        score_cast_func=st.sampled_from([float, str]),
    ),
    op("zdiff", ZKEYS, withscores=st.booleans()),
    op("zintercard", st.just(2), st.lists(KEYS, min_size=2, max_size=2), limit=st.integers(-1, 2)),
    op("zintercard", st.integers(0, 3), ZKEYS),
    op("zinterstore", KEYS, ZSOURCES, aggregate=ZAGGREGATE),
    op("zunionstore", KEYS, ZSOURCES, aggregate=ZAGGREGATE),
    op("zdiffstore", KEYS, ZKEYS),
    zop("zrangestore", (KEYS, KEYS, INDEX, INDEX), {"desc": st.booleans()}, ZLIMIT),
    zop(
        "zrangestore",
        (KEYS, KEYS, ZSCORES, ZSCORES),
        {"byscore": st.just(True), "desc": st.booleans()},
        ZLIMIT,
    ),
    zop(
        "zrangestore",
        (KEYS, KEYS, ZLEX, ZLEX),
        {"bylex": st.just(True), "desc": st.booleans()},
        ZLIMIT,
    ),
    zop(
        "zscan",
        (KEYS,),
        {},
        st.fixed_dictionaries(
            {},
            optional={
                "cursor": st.sampled_from([0, 7, "x"]),
                "match": st.sampled_from(["*", "f*", "[gh]", "?"]),
                "count": st.sampled_from([1, 10, 0]),
            },
        ),
    ),
    op("zrandmember", KEYS, st.sampled_from([0, 20]), withscores=st.booleans()),  # covers all
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
    # SCAN from 0 over two keys ends in one batch on both (Redis's default COUNT is 10);
    # patterns that match one key at most, as Redis orders a batch as it likes
    op(
        "scan",
        match=st.sampled_from(["a", "b*", "[^a]*"]),
        count=st.sampled_from([None, 10, 100]),
        _type=st.sampled_from([None, "string", "list"]),
    ),
    op("unlink", KEYS, KEYS),
    op("renamenx", KEYS, KEYS),
    op("copy", KEYS, KEYS, replace=st.booleans()),
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
