"""String, expiry and keyspace commands beyond what the differential test can compare:
argument coercions and errors against a real Redis, answer for answer; EXPIRETIME after
absolute expiries; SCAN's cursor (ours is KV's, not Redis's) by its guarantees; RANDOMKEY
by its properties; COPY, RENAMENX and MSETNX as one transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from brainbot.errors import ResponseError, UnsupportedOperation, ValueTooLarge
from brainbot.kv import EmbeddedKV
from brainbot.storage import KVStore, errors
from tests.support import compare

FAR = 4_000_000_000_600  # an absolute expiry in ms, the same on both sides


async def outcome(store: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An answer or the error (WrongTypeError is a ResponseError, as in redis-py)."""
    answer = await compare.outcome(store, name, args, kwargs)
    if answer[0] == "ok" and name == "scan":  # our cursor; a batch of a few keys is all
        return ("ok", answer[1][0] == 0, sorted(answer[1][1]))
    return answer


async def seed(store: Any) -> None:
    await store.set("a", "ohmytext")
    await store.set("b", "mynewtext")
    await store.set("n", 10)
    await store.rpush("L", "x", "y")
    await store.set("t", "timed")
    await store.pexpireat("t", FAR)


async def state(store: Any) -> dict[bytes, Any]:
    found = {}
    for key in sorted(await store.keys("*")):
        kind = await store.type(key)
        value = await store.get(key) if kind == b"string" else await store.lrange(key, 0, -1)
        found[key] = (kind, value, await store.pexpiretime(key))
    return found


CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    # SET's expiry options as redis-py checks them (ex: int, timedelta or a str of digits;
    # px: int or timedelta; exat/pxat: whatever Redis reads as an integer)
    ("set", ("k", "v"), {"ex": "100"}),
    ("set", ("k", "v"), {"ex": "-1"}),
    ("set", ("k", "v"), {"ex": 1.5}),
    ("set", ("k", "v"), {"ex": True}),
    ("set", ("k", "v"), {"ex": dt.timedelta(seconds=90)}),
    ("set", ("k", "v"), {"ex": 2**62}),
    ("set", ("k", "v"), {"ex": 2**64}),
    ("set", ("k", "v"), {"px": "100000"}),
    ("set", ("k", "v"), {"px": 2**63 - 1}),
    ("set", ("k", "v"), {"exat": "4000000000"}),
    ("set", ("k", "v"), {"exat": "x"}),
    ("set", ("k", "v"), {"exat": 1.5}),
    ("set", ("k", "v"), {"exat": 0}),
    ("set", ("k", "v"), {"pxat": 2**63 - 1}),
    ("set", ("k", "v"), {"pxat": b"4000000000000"}),
    ("set", ("k", "v"), {"ex": 10, "keepttl": True}),
    # GETEX: the time is checked only once a string was found
    ("getex", ("a",), {"ex": "100"}),
    ("getex", ("a",), {"px": "100"}),
    ("getex", ("a",), {"exat": "x"}),
    ("getex", ("missing",), {"exat": "x"}),
    ("getex", ("missing",), {"ex": 0}),
    ("getex", ("L",), {"exat": "x"}),
    ("getex", ("a",), {"ex": 0}),
    ("getex", ("a",), {"pxat": -1}),
    ("getex", ("a",), {"exat": 1}),
    ("getex", ("t",), {"persist": True}),
    ("getex", ("t",), {}),
    ("getex", ("a",), {"pxat": FAR}),
    ("getex", ("a",), {"exat": dt.datetime.fromtimestamp(4_000_000_000.7, dt.UTC)}),
    ("getex", ("a",), {"ex": 10, "persist": True}),
    # SETEX/PSETEX send the time as it is
    ("setex", ("k", "100", "v"), {}),
    ("setex", ("k", "x", "v"), {}),
    ("setex", ("k", 0, "v"), {}),
    ("setex", ("k", -1, "v"), {}),
    ("setex", ("k", 1.5, "v"), {}),
    ("setex", ("k", 2**62, "v"), {}),
    ("setex", ("k", None, "v"), {}),
    ("setex", ("k", dt.timedelta(minutes=2), "v"), {}),
    ("psetex", ("k", "100000", "v"), {}),
    ("psetex", ("k", 0, "v"), {}),
    ("psetex", ("k", "1.5", "v"), {}),
    ("psetex", ("k", 2**63 - 1, "v"), {}),
    ("psetex", ("L", 100_000, "v"), {}),  # SETEX overwrites any type
    ("getset", ("t", "new"), {}),  # drops the TTL
    ("getset", ("missing", "new"), {}),
    ("getset", ("L", "new"), {}),
    ("msetnx", ({"k": 1, "j": 2},), {}),
    ("msetnx", ({"k": 1, "a": 2},), {}),
    ("msetnx", ({},), {}),
    ("mset", ({},), {}),
    # GETRANGE/SUBSTR and their quirks (a negative end before the start clamps to 0)
    ("getrange", ("b", 0, 3), {}),
    ("getrange", ("b", -3, -1), {}),
    ("getrange", ("b", 5, 2), {}),
    ("getrange", ("b", 0, -100), {}),
    ("getrange", ("b", -100, -100), {}),
    ("getrange", ("b", -1, -5), {}),
    ("getrange", ("b", 3, 100), {}),
    ("getrange", ("b", "2", b"4"), {}),
    ("getrange", ("b", "x", 2), {}),
    ("getrange", ("b", 2**63, 1), {}),
    ("getrange", ("missing", 0, 3), {}),
    ("getrange", ("n", 0, 0), {}),
    ("getrange", ("L", 0, 1), {}),
    ("substr", ("b", 2), {}),
    ("substr", ("b", -4, -2), {}),
    # SETRANGE: zero padding, the TTL kept, Redis's limits
    ("setrange", ("b", 20, "Z"), {}),
    ("setrange", ("t", 1, "IM"), {}),
    ("setrange", ("b", 0, ""), {}),
    ("setrange", ("missing", 0, ""), {}),
    ("setrange", ("missing", 3, "x"), {}),
    ("setrange", ("missing", -1, "x"), {}),
    ("setrange", ("missing", 512 * 1024 * 1024, "x"), {}),
    ("setrange", ("b", "x", "a"), {}),
    ("setrange", ("b", 1.0, "a"), {}),
    ("setrange", ("b", "2", 77), {}),
    ("setrange", ("L", 0, "x"), {}),
    ("setrange", ("L", -1, "x"), {}),
    # LCS and its options as redis-py sends them
    ("lcs", ("a", "b"), {}),
    ("lcs", ("a", "b"), {"len": True}),
    ("lcs", ("a", "b"), {"idx": True}),
    ("lcs", ("a", "b"), {"idx": True, "withmatchlen": True}),
    ("lcs", ("a", "b"), {"idx": True, "minmatchlen": 4}),
    ("lcs", ("a", "b"), {"idx": True, "minmatchlen": -3}),
    ("lcs", ("a", "b"), {"idx": True, "minmatchlen": "x"}),
    ("lcs", ("a", "b"), {"minmatchlen": 1.5}),
    ("lcs", ("a", "b"), {"len": True, "idx": True}),
    ("lcs", ("a", "b"), {"len": True, "withmatchlen": True}),
    ("lcs", ("a", "missing"), {"idx": True}),
    ("lcs", ("missing", "missing"), {}),
    ("lcs", ("a", "L"), {}),
    ("lcs", ("a", "n"), {}),
    # EXPIRE and kin: flags first, then the time as Redis reads it, then its range
    ("expire", ("a", "100"), {}),
    ("expire", ("a", "1.5"), {}),
    ("expire", ("a", 1.5), {}),
    ("expire", ("a", "-0"), {}),
    ("expire", ("a", "+5"), {}),
    ("expire", ("a", " 5"), {}),
    ("expire", ("a", True), {}),
    ("expire", ("a", None), {}),
    ("expire", ("a", 2**62), {}),
    ("expire", ("a", -(2**62)), {}),
    ("expire", ("a", 2**64), {}),
    ("expire", ("a", "-5"), {}),
    ("expire", ("missing", "x"), {}),
    ("expire", ("a", "x"), {"nx": True, "xx": True}),
    ("expire", ("a", "x"), {"gt": True, "lt": True}),
    ("expire", ("a", dt.timedelta(minutes=5)), {}),
    ("pexpire", ("a", "150000"), {}),
    ("pexpire", ("a", 2**63 - 1), {}),
    ("expireat", ("a", "4000000000"), {}),
    ("expireat", ("a", dt.datetime.fromtimestamp(4_000_000_000.7, dt.UTC)), {}),
    ("pexpireat", ("a", "x"), {}),
    ("pexpireat", ("a", str(FAR)), {}),
    ("pexpireat", ("a", dt.datetime.fromtimestamp(4_000_000_000.7, dt.UTC)), {}),
    ("pexpireat", ("t", FAR + 1000), {"lt": True}),
    ("expiretime", ("t",), {}),
    ("pexpiretime", ("t",), {}),
    ("expiretime", ("a",), {}),
    ("pexpiretime", ("missing",), {}),
    ("persist", ("t",), {}),
    # keyspace
    ("renamenx", ("a", "k"), {}),
    ("renamenx", ("a", "b"), {}),
    ("renamenx", ("a", "a"), {}),
    ("renamenx", ("missing", "missing"), {}),
    ("renamenx", ("t", "new"), {}),  # the TTL goes along
    ("copy", ("t", "k"), {}),
    ("copy", ("t", "a"), {}),
    ("copy", ("t", "a"), {"replace": True}),
    ("copy", ("L", "k"), {}),
    ("copy", ("missing", "k"), {}),
    ("copy", ("a", "a"), {}),
    ("copy", ("missing", "missing"), {}),
    ("unlink", ("a", "L", "missing"), {}),
    ("unlink", ("missing",), {}),
    ("scan", (), {}),
    ("scan", (0,), {"match": "[ab]", "count": 100}),
    ("scan", ("0",), {"_type": "LIST"}),
    ("scan", (0,), {"_type": "nosuch"}),
    ("scan", ("abc",), {}),
    ("scan", (0,), {"count": 0}),
    ("scan", (0,), {"count": -1}),
    ("scan", (0,), {"count": "x"}),
    # bytearray keys and values, as redis-py takes them
    ("set", (bytearray(b"k"), bytearray(b"\xffv")), {}),
    ("get", (bytearray(b"a"),), {}),
    ("mget", (bytearray(b"a"), bytearray(b"b")), {}),
    ("mset", ({"k": bytearray(b"v")},), {}),
    ("append", (bytearray(b"a"), bytearray(b"!")), {}),
    ("getset", (bytearray(b"a"), bytearray(b"v")), {}),
    ("setrange", (bytearray(b"a"), 1, bytearray(b"ZZ")), {}),
    ("lcs", (bytearray(b"a"), bytearray(b"b")), {}),
    ("exists", (bytearray(b"a"), "b"), {}),
    ("copy", (bytearray(b"a"), bytearray(b"k")), {}),
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
        ours, theirs = await state(store), await state(redis_client)
        assert ours.keys() == theirs.keys()  # and the same effect
        for key, (kind, value, at) in theirs.items():
            assert ours[key][:2] == (kind, value), key
            assert ours[key][2] == at or abs(ours[key][2] - at) < 2000, key  # relative TTLs


async def test_relative_expiries_read_back_as_absolute_times(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.set("k", "v", ex=500)
        now = time.time()
        assert abs(await store.pexpiretime("k") - (now * 1000 + 500_000)) < 2000
        assert abs(await store.expiretime("k") - (now + 500)) <= 2
        await store.pexpireat("k", 4_000_000_000_499)
        assert await store.expiretime("k") == 4_000_000_000  # rounded, as Redis does
        await store.pexpireat("k", 4_000_000_000_500)
        assert await store.expiretime("k") == 4_000_000_001


async def test_getex_sets_and_drops_the_ttl(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.set("k", "v")
        assert await store.getex("k", ex=300) == b"v"
        assert 290 < await store.ttl("k") <= 300
        assert await store.getex("k") == b"v"
        assert 290 < await store.ttl("k") <= 300  # no option: nothing changes
        assert await store.getex("k", px=dt.timedelta(minutes=10)) == b"v"
        assert 590 < await store.ttl("k") <= 600
        assert await store.getex("k", persist=True) == b"v"
        assert await store.ttl("k") == -1
        assert await store.getex("k", exat=1) == b"v"  # in the past: deleted
        assert await store.exists("k") == 0


async def test_setrange_pads_with_zero_bytes_and_stays_within_kv_limits(
    store_factory: Any,
) -> None:
    async with store_factory() as store:
        assert await store.setrange("k", 3, b"ab") == 5
        assert await store.get("k") == b"\x00\x00\x00ab"
        assert await store.setrange("k", 1, "XYZW") == 5
        assert await store.get("k") == b"\x00XYZW"
        with pytest.raises(ValueTooLarge):  # KV keeps 25 MiB at most: refused before writing
            await store.setrange("k", 30 * 1024 * 1024, "x")
        assert await store.get("k") == b"\x00XYZW"


async def test_lcs_on_longer_strings_and_decoded(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True) as store:
        await store.set("a", "ohmytext")
        await store.set("b", "mynewtext")
        assert await store.lcs("a", "b") == "mytext"
        assert await store.lcs("a", "b", idx=True, withmatchlen=True) == [
            "matches",
            [[[4, 7], [5, 8], 4], [[2, 3], [0, 1], 2]],
            "len",
            6,
        ]
        assert await store.getrange("a", 0, 1) == "oh"


async def test_lcs_agrees_with_redis_on_many_strings(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    import random

    draw = random.Random(7)
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        for n in [*range(150), 700, 900]:  # long ones: their table is filled on a thread
            size = n if n > 150 else draw.randint(0, 14)
            pair = [bytes(draw.choice(b"abc") for _ in range(size)) for _ in "xy"]
            for client in (store, redis_client):
                await client.mset({"x": pair[0], "y": pair[1]})
            for options in (
                {},
                {"idx": True, "withmatchlen": True},
                {"idx": True, "minmatchlen": 2},
            ):
                assert await store.lcs("x", "y", **options) == await redis_client.lcs(
                    "x", "y", **options
                ), (pair, options)


async def test_scan_pages_through_every_key_once(store_factory: Any) -> None:
    names = {f"k{i:02}".encode() for i in range(57)}
    async with store_factory() as store:
        await store.mset({name: "v" for name in names})
        await store.rpush("list", "x")
        for count in (None, 1, 7, 25, 2000):
            seen: list[bytes] = []
            cursor = 0
            while True:
                cursor, batch = await store.scan(cursor, match="k*", count=count)
                assert isinstance(cursor, int)
                seen += batch
                if cursor == 0:
                    break
            assert sorted(seen) == sorted(names)
        cursor, batch = await store.scan(0, count=1000, _type="list")
        assert (cursor, batch) == (0, [b"list"])
        # a batch of COUNT names at least 10 (KV's least list page): more batches to come
        cursor, batch = await store.scan(0, match="k*", count=10)
        assert cursor != 0
        assert len(batch) == 10
        assert str(cursor).isdigit()  # and it goes back in as text, as redis-py sends it
        cursor, batch = await store.scan(str(cursor), match="k*", count=10)
        assert batch[0] == b"k10"


async def test_scan_skips_expired_keys_and_sees_keys_kept_throughout(
    store_factory: Any,
) -> None:
    now = [time.time()]  # KV itself keeps entries 60 s at least, by the real clock
    async with store_factory(clock=lambda: now[0]) as store:
        await store.mset({f"k{i:02}": "v" for i in range(30)})
        await store.expire("k05", 100)
        now[0] += 200  # k05 is expired (its KV entry lives on, cut to its 60 s floor later)
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, batch = await store.scan(cursor, count=10)
            seen |= set(batch)
            await store.delete(*batch[:1])  # keys go while the scan runs
            await store.set(f"new{len(seen)}", "v")  # and others come
            if cursor == 0:
                break
        assert seen >= {f"k{i:02}".encode() for i in range(30)} - {b"k05"}
        assert b"k05" not in seen


async def test_scan_refuses_a_cursor_it_did_not_hand_out(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        for cursor in (5, -1, "x", 1.5, 2**64):
            with pytest.raises(errors.ResponseError, match="invalid cursor"):
                await store.scan(cursor)
        with pytest.raises(errors.DataError):
            await store.scan(True)


async def test_scan_under_a_prefix_and_decoded(tmp_path: Path) -> None:
    namespace = EmbeddedKV(tmp_path / "kv.sqlite3")
    async with KVStore(namespace, prefix="app:", decode_responses=True) as store:
        await store.set("x", 1)
        await store.set("y", 2)
        other = KVStore(namespace, prefix="other:")
        await other.set("z", 3)
        cursor, batch = await store.scan()
        assert (cursor, sorted(batch)) == (0, ["x", "y"])
        assert await store.randomkey() in ("x", "y")


async def test_randomkey_draws_live_keys_at_random(store_factory: Any) -> None:
    now = [time.time()]  # KV itself keeps entries 60 s at least, by the real clock
    async with store_factory(clock=lambda: now[0]) as store:
        assert await store.randomkey() is None
        await store.mset({"a": 1, "b": 2, "c": 3, "gone": 4})
        await store.expire("gone", 100)
        now[0] += 200
        drawn = {await store.randomkey() for _ in range(60)}
        assert drawn == {b"a", b"b", b"c"}
        await store.delete("a", "b", "c")
        assert await store.randomkey() is None


async def test_copy_is_a_deep_copy_with_the_ttl(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.rpush("src", "x")
        await store.expire("src", 500)
        assert await store.copy("src", "dst") is True
        await store.rpush("dst", "y")
        assert await store.lrange("src", 0, -1) == [b"x"]
        assert await store.lrange("dst", 0, -1) == [b"x", b"y"]
        assert 490 < await store.ttl("dst") <= 500
        with pytest.raises(UnsupportedOperation):
            await store.copy("src", "dst", destination_db="1")
        with pytest.raises(UnsupportedOperation):
            await store.copy("src", "dst", destination_db="0")


async def test_multi_key_commands_are_one_transaction(store_factory: Any) -> None:
    async with store_factory() as store:
        won = await asyncio.gather(*(store.msetnx({"x": i, f"y{i}": i}) for i in range(12)))
        assert won.count(True) == 1
        winner = won.index(True)
        assert await store.get("x") == str(winner).encode()
        assert await store.keys("y*") == [f"y{winner}".encode()]
        await store.set("src", "v")
        moved = await asyncio.gather(
            *(store.renamenx("src", f"d{i}") for i in range(4)), return_exceptions=True
        )
        assert moved.count(True) == 1  # the others find no source, or lose to the winner
        assert all(m is True or isinstance(m, errors.ResponseError) for m in moved)
        copied = await asyncio.gather(*(store.copy("x", "c") for _ in range(6)))
        assert copied.count(True) == 1


async def test_bytearray_keys_route_in_dual_mode() -> None:
    spec = KVStore.command_specs()["copy"]
    assert spec.keys_of({"source": bytearray(b"a"), "destination": "b"}) == [bytearray(b"a"), "b"]
    assert KVStore.command_specs()["mget"].keys_of({"keys": bytearray(b"a"), "args": ()}) == [
        bytearray(b"a")
    ]


def test_signatures_are_redis_pys() -> None:
    from redis.commands.core import AsyncScanCommands, BasicKeyCommands

    for name in [
        "getset",
        "getex",
        "setex",
        "psetex",
        "msetnx",
        "getrange",
        "setrange",
        "substr",
        "lcs",
        "expiretime",
        "pexpiretime",
        "unlink",
        "renamenx",
        "randomkey",
        "copy",
        "set",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "scan",
    ]:
        ours = inspect.signature(getattr(KVStore, name)).parameters
        theirs = inspect.signature(
            getattr(BasicKeyCommands, name, None) or getattr(AsyncScanCommands, name)
        ).parameters
        if name == "set":  # redis-py 8.1 adds Redis 8.4's IFEQ/IFNE/IFDEQ/IFDNE at the end
            theirs = {k: p for k, p in theirs.items() if k in ours}
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name


async def test_encoding_options_flushall_and_byte_like_patterns(tmp_path: Path) -> None:
    """redis-py's ``encoding``/``encoding_errors``; FLUSHALL is this store's FLUSHDB (one
    keyspace per namespace); SCAN's MATCH as a memoryview; HMGET of one bytearray field."""
    from brainbot.kv import EmbeddedKV
    from brainbot.storage import KVStore

    kv = EmbeddedKV(tmp_path / "enc.sqlite3")
    latin = KVStore(kv, decode_responses=True, encoding="latin-1")
    await latin.set("k", "café")
    assert await latin.get("k") == "café"
    raw = KVStore(kv)
    assert await raw.get("k") == "café".encode("latin-1")
    await raw.set("bad", b"\xff\xfe")
    lenient = KVStore(kv, decode_responses=True, encoding_errors="replace")
    assert await lenient.get("bad") == "\ufffd\ufffd"
    with pytest.raises(UnicodeDecodeError):
        await KVStore(kv, decode_responses=True).get("bad")
    await raw.hset("h", mapping={b"field-bytearray": b"v"})
    assert await raw.hmget("h", bytearray(b"field-bytearray")) == [b"v"]
    _, found = await raw.scan(0, match=memoryview(b"h*"))
    assert found == [b"h"]
    assert await raw.flushall() is True
    assert await raw.keys() == []
    with pytest.raises(LookupError):
        KVStore(kv, encoding="no-such-codec")
    await kv.aclose()


async def test_set_ifeq_ifne_msetex_and_increx(tmp_path: Path) -> None:
    """Redis 8.4 options (the redis-server of the tests is 7.0): hand-written expectations,
    and redis-py's client-side refusals."""
    from brainbot.errors import DataError, UnsupportedOperation
    from brainbot.kv import EmbeddedKV
    from brainbot.storage import KVStore

    store = KVStore(EmbeddedKV(tmp_path / "new.sqlite3"))
    assert await store.set("k", "v2", ifeq="v1") is None  # absent: not created
    await store.set("k", "v1")
    assert await store.set("k", "v2", ifeq="nope") is None
    assert await store.set("k", "v2", ifeq="v1") is True
    assert await store.set("k", "v3", ifne="v2") is None
    assert await store.set("k", "v3", ifne="other") is True
    assert await store.get("k") == b"v3"
    with pytest.raises(DataError, match="mutually exclusive"):
        await store.set("k", "x", nx=True, ifeq=b"")
    with pytest.raises(UnsupportedOperation, match="XXH3"):
        await store.set("k", "x", ifdeq="abc")

    assert await store.msetex({"m1": "a", "m2": "b"}, ex=100) == 1
    assert 99 <= await store.ttl("m1") <= 100
    nx = type("Opt", (), {"value": "NX"})()
    assert await store.msetex({"m2": "c", "m3": "d"}, nx, ex=100) == 0  # m2 exists
    assert await store.get("m3") is None
    with pytest.raises(DataError, match="mutually exclusive"):
        await store.msetex({"m1": "a"}, ex=1, keepttl=True)

    assert await store.increx("n") == [1, 1]
    assert await store.increx("n", byint=10, ubound=5) == [1, 0]  # refused: unchanged
    assert await store.increx("n", byint=10, ubound=5, saturate=True) == [5, 4]
    assert await store.increx("n", byint=-2, ex=100) == [3, -2]
    assert 99 <= await store.ttl("n") <= 100
    assert await store.increx("f", byfloat=0.5) == [0.5, 0.5]
    with pytest.raises(DataError, match="mutually exclusive"):
        await store.increx("n", byint=1, byfloat=1.0)
    with pytest.raises(DataError, match="requires one of"):
        await store.increx("n", enx=True)
    await store.set("s", "text")
    with pytest.raises(ResponseError, match="not an integer"):
        await store.increx("s")
    await store.aclose()


async def test_float_increments_round_as_redis_long_doubles(
    store_factory: Any, redis_client: aioredis.Redis
) -> None:
    """Redis adds in 80-bit long double and prints 17 decimals: decimal arithmetic gave
    5e-5 + 1e-20 = 0.00005000000000000001 where Redis answers 0.00005. Drawn cases, answer
    for answer with a real redis-server, for INCRBYFLOAT and HINCRBYFLOAT."""
    import random

    rng = random.Random(7)
    cases = [("5e-5", 1e-20), ("0.1", 0.2), ("1e308", 1e308), ("-0", -0.0), ("3", 1e-17)]
    for _ in range(150):
        kind = rng.random()
        if kind < 0.4:
            cases.append((repr(rng.uniform(-1e3, 1e3)), rng.uniform(-1, 1)))
        elif kind < 0.7:
            cases.append((f"{rng.randint(-9, 9)}e{rng.randint(-30, 30)}", rng.uniform(-1, 1)))
        else:
            cases.append((repr(rng.random() * 10 ** rng.randint(-20, 300)), rng.random()))
    async with store_factory() as store:
        for start, amount in cases:
            answers = []
            for client in (redis_client, store):
                await client.set("f", start)
                await client.hset("h", "f", start)
                answers.append(
                    (
                        await compare.outcome(client, "incrbyfloat", ("f", amount), {}),
                        await client.get("f"),
                        await compare.outcome(client, "hincrbyfloat", ("h", "f", amount), {}),
                        await client.hget("h", "f"),
                    )
                )
            assert answers[0] == answers[1], (start, amount)
