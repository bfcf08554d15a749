"""Bulk put, delete and get: any size (split under the hood), binary values, validation first."""

from __future__ import annotations

import os

import pytest

from brainbot.kv import Entry, KeyTooLong, PutItem, ValueTooLarge, iter_keys
from brainbot.kv.limits import BULK_WRITE_MAX_ITEMS
from tests.contract.conftest import Target


async def count(target: Target) -> int:
    return sum([1 async for _ in iter_keys(target.kv)])


async def test_bulk_put_of_more_than_one_request_writes_everything(target: Target) -> None:
    n = BULK_WRITE_MAX_ITEMS + 1
    result = await target.kv.put_many([PutItem(f"k{i:05d}", f"v{i}") for i in range(n)])
    assert result.ok
    assert result.successful_key_count == n
    assert await count(target) == n
    assert await target.kv.get("k10000") == Entry(b"v10000")


async def test_bulk_put_carries_binary_metadata_and_expiry(target: Target) -> None:
    at = int(target.now()) + 3600
    blobs = {f"b{i}": os.urandom(64) + b"\xff\x00" for i in range(20)}
    items = [PutItem(k, v, metadata={"i": k}) for k, v in blobs.items()]
    items.append(PutItem("ttl", b"t", expiration_ttl=600))
    items.append(PutItem("abs", "text é", expiration=at))
    result = await target.kv.put_many(items)
    assert result.ok
    got = await target.kv.get_many([*blobs, "ttl", "abs"])
    for key, value in blobs.items():
        assert got[key] == Entry(value, None, {"i": key})
    ttl, absolute = got["ttl"], got["abs"]
    assert ttl is not None
    assert ttl.expiration is not None
    assert ttl.expiration >= int(target.now()) + 590
    assert absolute == Entry("text é".encode(), at, None)


async def test_bulk_put_with_one_bad_item_writes_nothing(target: Target) -> None:
    items = [PutItem(f"k{i}", b"v") for i in range(50)] + [PutItem("x" * 513, b"v")]
    with pytest.raises(KeyTooLong):
        await target.kv.put_many(items)
    big = [PutItem("a", b"v"), PutItem("b", b"\0" * (25 * 1024 * 1024 + 1))]
    with pytest.raises(ValueTooLarge):
        await target.kv.put_many(big)
    assert await count(target) == 0


async def test_bulk_put_of_nothing_is_fine(target: Target) -> None:
    result = await target.kv.put_many([])
    assert result.successful_key_count == 0
    assert result.ok


async def test_bulk_delete_removes_present_and_ignores_missing(target: Target) -> None:
    await target.kv.put_many([PutItem(f"k{i:05d}", b"v") for i in range(12_000)])
    result = await target.kv.delete_many([f"k{i:05d}" for i in range(0, 12_000, 2)] + ["missing"])
    assert result.ok
    assert await count(target) == 6_000
    assert await target.kv.get("k00000") is None
    assert await target.kv.get("k00001") == Entry(b"v")


async def test_bulk_get_spans_requests_and_reports_missing(target: Target) -> None:
    blobs = {f"k{i:03d}": bytes([i % 256]) * 3 + b"\xfe" for i in range(150)}
    await target.kv.put_many(
        [PutItem(k, v, metadata={"n": i}) for i, (k, v) in enumerate(blobs.items())]
    )
    keys = [*blobs, "absent-1", "absent-2"]
    got = await target.kv.get_many(keys)
    assert list(got) == keys
    assert got["absent-1"] is None
    assert got["absent-2"] is None
    for i, (key, value) in enumerate(blobs.items()):
        assert got[key] == Entry(value, None, {"n": i})


async def test_bulk_get_with_a_bad_key_is_refused(target: Target) -> None:
    with pytest.raises(KeyTooLong):
        await target.kv.get_many(["ok", "x" * 513])
