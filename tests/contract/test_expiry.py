"""Expiry: the 60-second floor at and past its edge, absolute times, and keys vanishing."""

from __future__ import annotations

import pytest

from brainbot.kv import InvalidExpiration, InvalidExpirationTTL, PutItem, iter_keys
from tests.contract.conftest import Target

# Over HTTP the server's clock may tick between our check and its own: on the remote
# targets the edge of the absolute expiry is tested one second in, where it cannot flake.


def edge(target: Target) -> int:
    return 60 if target.name == "embedded" else 61


async def test_ttl_of_60_is_accepted_and_sets_an_absolute_expiry(target: Target) -> None:
    before = int(target.now())
    await target.kv.put("k", b"v", expiration_ttl=60)
    entry = await target.kv.get("k")
    assert entry is not None
    assert entry.expiration is not None
    assert before + 60 <= entry.expiration <= int(target.now()) + 61


async def test_ttl_of_59_is_refused(target: Target) -> None:
    with pytest.raises(InvalidExpirationTTL, match="Expiration TTL must be at least 60"):
        await target.kv.put("k", b"v", expiration_ttl=59)
    assert await target.kv.get("k") is None


async def test_absolute_expiration_60_seconds_ahead_is_accepted(target: Target) -> None:
    at = int(target.now()) + edge(target)
    await target.kv.put("k", b"v", expiration=at)
    entry = await target.kv.get("k")
    assert entry is not None
    assert entry.expiration == at


async def test_absolute_expiration_59_seconds_ahead_is_refused(target: Target) -> None:
    with pytest.raises(InvalidExpiration, match="at least 60 seconds in the future"):
        await target.kv.put("k", b"v", expiration=int(target.now()) + 59)
    assert await target.kv.get("k") is None


async def test_absolute_expiration_in_the_past_is_refused(target: Target) -> None:
    with pytest.raises(InvalidExpiration, match="greater than the current number of seconds"):
        await target.kv.put("k", b"v", expiration=int(target.now()) - 10)


async def test_giving_both_expiry_forms_is_refused(target: Target) -> None:
    with pytest.raises(InvalidExpiration, match="not both"):
        await target.kv.put("k", b"v", expiration=int(target.now()) + 600, expiration_ttl=600)


async def test_non_integer_expiry_is_refused(target: Target) -> None:
    with pytest.raises(InvalidExpirationTTL):
        await target.kv.put("k", b"v", expiration_ttl=60.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidExpiration):
        await target.kv.put("k", b"v", expiration="soon")  # type: ignore[arg-type]


async def test_list_shows_expiration_and_metadata(target: Target) -> None:
    at = int(target.now()) + 3600
    await target.kv.put("a", b"1", expiration=at, metadata={"t": "string"})
    await target.kv.put("b", b"2")
    page = await target.kv.list()
    assert [(k.name, k.expiration, k.metadata) for k in page.keys] == [
        ("a", at, {"t": "string"}),
        ("b", None, None),
    ]


async def test_expired_keys_vanish_from_get_list_and_bulk_get(target: Target) -> None:
    await target.kv.put("short", b"v", expiration_ttl=60)
    await target.kv.put("long", b"v", expiration_ttl=3600)
    await target.kv.put("forever", b"v")
    await target.advance(61)
    assert await target.kv.get("short") is None
    assert [k.name async for k in iter_keys(target.kv)] == ["forever", "long"]
    found = await target.kv.get_many(["short", "long"])
    assert found["short"] is None
    assert found["long"] is not None


async def test_rewriting_an_expired_key_brings_it_back(target: Target) -> None:
    await target.kv.put("k", b"old", expiration_ttl=60)
    await target.advance(120)
    assert await target.kv.get("k") is None
    await target.kv.put("k", b"new")
    entry = await target.kv.get("k")
    assert entry is not None
    assert (entry.value, entry.expiration) == (b"new", None)


async def test_bulk_put_validates_expiry_of_every_item_first(target: Target) -> None:
    items = [PutItem("ok", b"v", expiration_ttl=60), PutItem("bad", b"v", expiration_ttl=30)]
    with pytest.raises(InvalidExpirationTTL):
        await target.kv.put_many(items)
    assert await target.kv.get("ok") is None


async def test_expiry_beyond_2038_is_refused(target: Target) -> None:
    with pytest.raises(InvalidExpiration):
        await target.kv.put("k", b"v", expiration=2**31)
    with pytest.raises(InvalidExpiration):
        await target.kv.put("k", b"v", expiration=10**19)
    with pytest.raises(InvalidExpirationTTL):
        await target.kv.put("k", b"v", expiration_ttl=2**31)
    await target.kv.put("k", b"v", expiration=2**31 - 1)
    entry = await target.kv.get("k")
    assert entry is not None
    assert entry.expiration == 2**31 - 1


async def test_whole_float_expiry_is_taken_as_an_integer(target: Target) -> None:
    at = int(target.now()) + 3600
    await target.kv.put("k", b"v", expiration=float(at))  # type: ignore[arg-type]
    await target.kv.put_many([PutItem("b", b"v", expiration_ttl=600.0)])  # type: ignore[arg-type]
    entry = await target.kv.get("k")
    assert entry is not None
    assert entry.expiration == at
    assert await target.kv.get("b") is not None
