"""Hash commands beyond what the differential test draws: HRANDFIELD's random answers by
their properties, argument checks and edge cases against a real Redis (answer for answer),
HSCAN's NOVALUES and ``hscan_iter``, and Redis 8's HGETEX/HSETEX (redis-server here is 7.0:
hand-written expectations from the Redis documentation)."""

from __future__ import annotations

import datetime as dt
import inspect
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import HashDataPersistOptions

from brainbot.kv import EmbeddedKV
from brainbot.storage import KVStore, errors
from tests.support.compare import outcome

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated hmset:DeprecationWarning")


async def seed(store: Any) -> None:
    await store.hset(
        "h",
        mapping={"f": "1", "g": "abc", "n": "1.5", "sp": " 1", "hx": "0x10", "e": "5.0e0"},
    )
    await store.hset("h", items=["i", "inf", "u", "1_0", "nan", "nan", "big", "1e400"])
    await store.hset("small", mapping={"a": 1, "b": 2, "c": b"\xff"})
    await store.set("s", "text")


CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    # HINCRBYFLOAT: the increment is checked first, then the type, then the old value
    ("hincrbyfloat", ("h", "f", 0.1), {}),
    ("hincrbyfloat", ("h", "f", "-1.1"), {}),
    ("hincrbyfloat", ("h", "n", "1e3"), {}),
    ("hincrbyfloat", ("h", "e", 1), {}),
    ("hincrbyfloat", ("h", "hx", 1), {}),  # strtold reads hexadecimal
    ("hincrbyfloat", ("h", "big", "1e-5000"), {}),  # strtold's underflow to zero
    ("hincrbyfloat", ("h", "g", 1), {}),
    ("hincrbyfloat", ("h", "sp", 1), {}),
    ("hincrbyfloat", ("h", "u", 1), {}),
    ("hincrbyfloat", ("h", "nan", 1), {}),
    ("hincrbyfloat", ("h", "i", 1), {}),
    ("hincrbyfloat", ("h", "new", float("inf")), {}),
    ("hincrbyfloat", ("h", "new", float("nan")), {}),
    ("hincrbyfloat", ("h", "new", "x"), {}),
    ("hincrbyfloat", ("h", "new", " 1"), {}),
    ("hincrbyfloat", ("h", "new", "1e5000"), {}),
    ("hincrbyfloat", ("h", "new", True), {}),
    ("hincrbyfloat", ("s", "f", "x"), {}),
    ("hincrbyfloat", ("s", "f", 1), {}),
    ("hincrbyfloat", ("h", "new"), {}),
    ("hincrbyfloat", ("h", "new", -3.25), {}),
    ("hincrbyfloat", ("h", "new", 10), {}),
    # HSETNX, HSTRLEN, HMSET, HSET's argument order
    ("hsetnx", ("h", "f", 2), {}),
    ("hsetnx", ("h", "q", 2), {}),
    ("hsetnx", ("s", "f", 1), {}),
    ("hsetnx", ("new", "f", 1), {}),
    ("hstrlen", ("h", "g"), {}),
    ("hstrlen", ("small", "c"), {}),
    ("hstrlen", ("h", "nope"), {}),
    ("hstrlen", ("missing", "f"), {}),
    ("hstrlen", ("s", "f"), {}),
    ("hmset", ("new", {"a": 1, "b": 2.5}), {}),
    ("hmset", ("new", {}), {}),
    ("hmset", ("s", {"a": 1}), {}),
    ("hset", ("new", "k", "v"), {"mapping": {"k": "m"}, "items": ["k", "i"]}),
    ("hset", ("new",), {"items": ["k", "i", "k", "j"]}),
    ("hset", ("new",), {"items": ["a"]}),
    ("hset", ("new", "k"), {}),
    ("hset", ("new",), {"mapping": {}}),
    # HRANDFIELD: what is not random
    ("hrandfield", ("missing",), {}),
    ("hrandfield", ("missing", 2), {}),
    ("hrandfield", ("missing", -2, True), {}),
    ("hrandfield", ("small", 0), {}),
    ("hrandfield", ("small", 3), {}),  # the whole hash, in its order
    ("hrandfield", ("small", 30, True), {}),
    ("hrandfield", ("small", "x"), {}),
    ("hrandfield", ("small", 1.5), {}),
    ("hrandfield", ("small",), {"withvalues": True}),
    ("hrandfield", ("s", 1), {}),
    ("hrandfield", ("s", 0), {}),
    ("hrandfield", ("s",), {}),
    ("hrandfield", ("missing", -(2**63)), {}),
    ("hrandfield", ("missing", -(2**62), True), {}),
    ("hrandfield", ("missing", -(2**62) + 1, True), {}),
    ("hrandfield", ("small", 2**62, True), {}),
    # HSCAN: the cursor first, then the key, then the options (for a key that exists)
    ("hscan", ("small",), {}),
    ("hscan", ("small", "x"), {}),
    ("hscan", ("small", " 1"), {}),
    ("hscan", ("small", "+"), {}),
    ("hscan", ("small", ""), {}),
    ("hscan", ("small", 99), {}),
    ("hscan", ("small", "-1"), {}),
    ("hscan", ("small", 2**64), {}),
    ("hscan", ("small", -(2**64 - 1)), {}),
    ("hscan", ("small", 0), {"count": 0}),
    ("hscan", ("small", 0), {"count": "x"}),
    ("hscan", ("small", 0), {"match": "[ab]", "count": 1}),
    ("hscan", ("small", 0), {"match": b"?"}),
    ("hscan", ("missing", "x"), {}),
    ("hscan", ("missing", 0), {"count": 0}),
    ("hscan", ("s", 0), {"count": 0}),
    ("hscan", ("s", "x"), {}),
    ("hscan_iter", ("small",), {}),
    ("hscan_iter", ("small",), {"match": "b*", "count": 1}),
    ("hscan_iter", ("missing",), {}),
    ("hscan_iter", ("s",), {}),
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
        for key in ("h", "small", "new", "s", "missing"):  # and the same effect
            assert await store.type(key) == await redis_client.type(key)
            if await redis_client.type(key) == b"hash":
                assert await store.hgetall(key) == await redis_client.hgetall(key)


async def test_hrandfield_picks_distinct_fields_or_repeats_for_a_negative_count(
    store_factory: Any,
) -> None:
    fields = {b"p": b"1", b"q": b"2", b"r": b"3"}
    async with store_factory() as store:
        await store.hset("k", mapping=fields)
        assert await store.hrandfield("k") in fields
        assert {await store.hrandfield("k") for _ in range(40)} == set(fields)  # random
        for n in (1, 2, 3, 10):
            picked = await store.hrandfield("k", n)
            assert len(picked) == len(set(picked)) == min(n, 3)
            assert set(picked) <= set(fields)
        repeated = await store.hrandfield("k", -60)
        assert len(repeated) == 60
        assert set(repeated) <= set(fields)
        assert max(Counter(repeated).values()) > 1
        assert len(set(repeated)) > 1
        flat = await store.hrandfield("k", -7, withvalues=True)
        assert len(flat) == 14  # [field, value, ...], as redis-py gives it on RESP2
        assert all(fields[f] == v for f, v in zip(flat[::2], flat[1::2], strict=True))
        two = await store.hrandfield("k", 2, True)
        assert len(set(two[::2])) == 2
        assert await store.hgetall("k") == fields  # nothing taken


async def test_hscan_without_values(store_factory: Any) -> None:
    """NOVALUES is Redis 7.4's: the Redis here is 7.0, so by hand."""
    async with store_factory() as store:
        await store.hset("k", mapping={"a": 1, "b": 2, "ab": 3})
        assert await store.hscan("k", no_values=True) == (0, [b"a", b"b", b"ab"])
        assert await store.hscan("k", match="a*", no_values=True) == (0, [b"a", b"ab"])
        assert await store.hscan("k", no_values=False) == (0, {b"a": b"1", b"b": b"2", b"ab": b"3"})
        assert await store.hscan("missing", no_values=True) == (0, [])
        assert [f async for f in store.hscan_iter("k", no_values=True)] == [b"a", b"b", b"ab"]
        assert [p async for p in store.hscan_iter("k", match="b")] == [(b"b", b"2")]


async def test_hscan_matches_bytes_as_redis_does(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as store:
        await store.hset("k", mapping={b"\xff\x00": 1, "é": 2, b"ab": 3})
        assert await store.hscan("k", match=b"\xff*") == (0, {b"\xff\x00": b"1"})
        assert await store.hscan("k", match="é", no_values=True) == (0, ["é".encode()])
        assert (await store.hscan("k", match="??"))[1] == {
            b"\xff\x00": b"1",
            "é".encode(): b"2",  # one byte per ?, not one character
            b"ab": b"3",
        }


async def test_hmset_warns_as_redis_py_does_and_answers_true(store_factory: Any) -> None:
    async with store_factory() as store:
        with pytest.warns(DeprecationWarning, match="Use 'hset' instead"):
            assert await store.hmset("k", {"a": 1}) is True
        assert await store.hgetall("k") == {b"a": b"1"}


async def test_decoded_answers(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True) as store:
        await store.hset("k", mapping={"é": "v", "n": "2.5"})
        assert await store.hincrbyfloat("k", "n", "0.25") == 2.75
        assert await store.hget("k", "n") == "2.75"
        assert await store.hrandfield("k", 5, withvalues=True) == ["é", "v", "n", "2.75"]
        assert await store.hscan("k", match="é") == (0, {"é": "v"})
        assert await store.hgetex("k", "é", "x") == ["v", None]
        assert await store.hstrlen("k", "é") == 1


# -- HGETEX / HSETEX (Redis 8.0) ---------------------------------------------------------


async def test_hgetex_plain_and_persist_read_like_hmget(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.hset("k", mapping={"a": 1, "b": 2})
        await store.expire("k", 500)
        assert await store.hgetex("k", "a", "x", "b") == [b"1", None, b"2"]
        # PERSIST removes field TTLs: here no field has one, so it only reads
        assert await store.hgetex("k", "b", persist=True) == [b"2"]
        assert await store.hgetall("k") == {b"a": b"1", b"b": b"2"}
        assert 400 < await store.ttl("k") <= 500  # the key's own TTL is not a field's
        assert await store.hgetex("missing", "a", "b") == [None, None]
        assert await store.exists("missing") == 0
        await store.set("s", "text")
        with pytest.raises(errors.WrongTypeError):
            await store.hgetex("s", "a")


async def test_hsetex_sets_all_fields_or_none(store_factory: Any) -> None:
    async with store_factory() as store:
        assert await store.hsetex("k", "a", 1) == 1
        assert await store.hsetex("k", mapping={"b": 2, "c": 3}, items=["d", 4]) == 1
        assert await store.hgetall("k") == {b"a": b"1", b"d": b"4", b"b": b"2", b"c": b"3"}
        fnx, fxx = HashDataPersistOptions.FNX, HashDataPersistOptions.FXX
        # FNX: only if none of the fields exists; FXX: only if all of them do
        assert await store.hsetex("k", mapping={"a": 9, "e": 5}, data_persist_option=fnx) == 0
        assert await store.hsetex("k", mapping={"e": 5, "f": 6}, data_persist_option=fnx) == 1
        assert await store.hsetex("k", mapping={"a": 9, "z": 0}, data_persist_option=fxx) == 0
        assert await store.hsetex("k", mapping={"a": 7, "b": 8}, data_persist_option=fxx) == 1
        assert await store.hsetex("k", "a", 6, data_persist_option="fxx", keepttl=True) == 1
        assert await store.hmget("k", ["a", "b", "e", "f", "z"]) == [b"6", b"8", b"5", b"6", None]
        assert await store.hsetex("new", "a", 1, data_persist_option=fxx) == 0
        assert await store.exists("new") == 0  # FXX on no key creates nothing
        assert await store.hsetex("new", "a", 1, data_persist_option=fnx) == 1
        await store.set("s", "text")
        with pytest.raises(errors.WrongTypeError):
            await store.hsetex("s", "a", 1)
        with pytest.raises(errors.ResponseError, match=r"^unknown argument: FYY$"):
            await store.hsetex("k", "a", 1, data_persist_option="FYY")


async def test_hsetex_keeps_the_keys_ttl(store_factory: Any) -> None:
    async with store_factory() as store:
        await store.hset("k", "a", 1)
        await store.expire("k", 500)
        assert await store.hsetex("k", "b", 2) == 1
        assert 400 < await store.ttl("k") <= 500


@pytest.mark.parametrize(
    ("option", "value", "text"),
    [
        ("ex", 100, "EX"),
        ("px", dt.timedelta(seconds=100), "PX"),
        ("exat", 4_000_000_000, "EXAT"),
        ("pxat", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), "PXAT"),
    ],
)
async def test_field_expiry_is_refused_and_nothing_is_changed(
    store_factory: Any, option: str, value: Any, text: str
) -> None:
    async with store_factory() as store:
        await store.hset("k", "a", 1)
        for command, call in (
            ("HGETEX", store.hgetex("k", "a", **{option: value})),
            ("HSETEX", store.hsetex("k", "a", 2, **{option: value})),
        ):
            with pytest.raises(errors.UnsupportedOperation) as refused:
                await call
            message = str(refused.value)
            assert message.startswith(f"{command} {text} is not supported on KV: hash fields")
            assert "use EXPIRE on the whole key" in message
        assert await store.hgetall("k") == {b"a": b"1"}
        assert await store.ttl("k") == -1


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        # what redis-py refuses before sending anything
        ("hgetex", ("k",), {}),
        ("hgetex", ("k", "a"), {"ex": 1, "px": 1}),
        ("hgetex", ("k", "a"), {"ex": 1, "persist": True}),
        ("hgetex", ("k", "a"), {"ex": 1.5}),
        ("hgetex", ("k", "a"), {"px": "100"}),
        ("hsetex", ("k",), {}),
        ("hsetex", ("k",), {"mapping": {}}),
        ("hsetex", ("k",), {"items": ["a", 1, "b"]}),
        ("hsetex", ("k", "a", 1), {"ex": 1, "keepttl": True}),
        ("hsetex", ("k", "a", 1), {"exat": 1, "pxat": 1}),
        ("hsetex", ("k", "a", 1), {"ex": "x"}),
        ("hsetex", ("k", "a"), {}),
        ("hsetex", ("k", "a", True), {}),
        ("hsetex", ("k", "a"), {"ex": 100}),  # the encoder refuses before the expiry is
        ("hgetex", ("k", True), {"ex": 100}),
    ],
)
async def test_hgetex_hsetex_client_side_checks(
    store_factory: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    async with store_factory() as store:
        with pytest.raises(errors.DataError):
            await getattr(store, name)(*args, **kwargs)
        assert await store.exists("k") == 0


def test_signatures_are_redis_pys() -> None:
    names = "hset hsetnx hmset hget hmget hgetall hdel hexists hincrby hincrbyfloat hkeys hvals"
    names += " hlen hstrlen hrandfield hscan hscan_iter hgetex hsetex"
    for name in names.split():
        ours = inspect.signature(getattr(KVStore, name)).parameters
        theirs = inspect.signature(getattr(aioredis.Redis, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
