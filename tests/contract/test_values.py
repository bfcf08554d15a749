"""get / put / delete, and every limit on keys, values and metadata, at and past its edge."""

from __future__ import annotations

import hashlib
import os

import pytest

from brainbot.kv import (
    Entry,
    InvalidKey,
    InvalidMetadata,
    InvalidValue,
    KeyTooLong,
    MetadataTooLarge,
    ValueTooLarge,
    iter_keys,
)
from brainbot.kv.limits import MAX_VALUE_BYTES
from tests.contract.conftest import Target

ODD_KEYS = ["a/b", "100%", "?#", "with space", "é", "🙂", "%2F", "...", "a?b=c&d", "#frag", "+plus"]


async def names(target: Target) -> list[str]:
    return [info.name async for info in iter_keys(target.kv)]


async def test_put_then_get_returns_the_bytes(target: Target) -> None:
    await target.kv.put("greeting", b"hello")
    assert await target.kv.get("greeting") == Entry(b"hello")


async def test_str_values_are_stored_as_utf8(target: Target) -> None:
    await target.kv.put("text", "grüße 🙂")
    entry = await target.kv.get("text")
    assert entry is not None
    assert entry.value == "grüße 🙂".encode()


async def test_missing_key_reads_as_none_and_deletes_fine(target: Target) -> None:
    assert await target.kv.get("never-written") is None
    await target.kv.delete("never-written")
    assert await target.kv.get("never-written") is None


async def test_delete_removes_the_key(target: Target) -> None:
    await target.kv.put("gone", b"x")
    await target.kv.delete("gone")
    assert await target.kv.get("gone") is None
    assert await names(target) == []


@pytest.mark.parametrize(
    "value",
    [
        bytes(range(256)),
        b"\x00",
        b"\xff\xfe\xfd",
        b"\xc3\x28",  # invalid UTF-8 sequence
        "literal \ufffd replacement char".encode(),
        b"",
    ],
    ids=["all-bytes", "nul", "ff-fe-fd", "bad-utf8", "literal-fffd", "empty"],
)
async def test_binary_values_round_trip_byte_exact(target: Target, value: bytes) -> None:
    await target.kv.put("bin", value)
    entry = await target.kv.get("bin")
    assert entry is not None
    assert entry.value == value


@pytest.mark.parametrize("key", ODD_KEYS)
async def test_odd_key_names_round_trip(target: Target, key: str) -> None:
    await target.kv.put(key, key.encode() + b"\xff", metadata={"key": key})
    assert await target.kv.get(key) == Entry(key.encode() + b"\xff", None, {"key": key})
    assert await names(target) == [key]
    await target.kv.delete(key)
    assert await target.kv.get(key) is None


async def test_put_replaces_value_expiry_and_metadata_together(target: Target) -> None:
    await target.kv.put("k", b"one", expiration_ttl=600, metadata={"v": 1})
    await target.kv.put("k", b"two")
    assert await target.kv.get("k") == Entry(b"two", None, None)


async def test_metadata_round_trips(target: Target) -> None:
    meta = {"type": "hash", "n": 3, "nested": {"list": [1, "two", None, True]}, "ü": "🙂"}
    await target.kv.put("m", b"v", metadata=meta)
    entry = await target.kv.get("m")
    assert entry is not None
    assert entry.metadata == meta


# -- key limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["k" * 512, "é" * 256, "🙂" * 128], ids=["ascii", "2-byte", "4-byte"]
)
async def test_key_of_exactly_512_bytes_is_accepted(target: Target, key: str) -> None:
    assert len(key.encode()) == 512
    await target.kv.put(key, b"v")
    assert await target.kv.get(key) == Entry(b"v")
    assert await names(target) == [key]


@pytest.mark.parametrize(
    "key", ["k" * 513, "é" * 256 + "k", "🙂" * 128 + "k"], ids=["ascii", "2-byte", "4-byte"]
)
async def test_key_of_513_bytes_is_refused_and_nothing_changes(target: Target, key: str) -> None:
    with pytest.raises(KeyTooLong, match="exceeds key length limit of 512"):
        await target.kv.put(key, b"v")
    with pytest.raises(KeyTooLong):
        await target.kv.get(key)
    with pytest.raises(KeyTooLong):
        await target.kv.delete(key)
    assert await names(target) == []


@pytest.mark.parametrize("key", ["", ".", ".."])
async def test_illegal_key_names_are_refused(target: Target, key: str) -> None:
    with pytest.raises(InvalidKey):
        await target.kv.put(key, b"v")
    with pytest.raises(InvalidKey):
        await target.kv.get(key)
    assert await names(target) == []


async def test_non_str_keys_and_values_are_refused(target: Target) -> None:
    with pytest.raises(InvalidKey):
        await target.kv.put(b"bytes-key", b"v")  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        await target.kv.put("k", 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        await target.kv.put("\ud800", b"v")  # lone surrogate: not UTF-8
    assert await names(target) == []


# -- value limit ------------------------------------------------------------------------


async def test_value_of_exactly_25_mib_is_accepted(target: Target) -> None:
    value = os.urandom(MAX_VALUE_BYTES)
    await target.kv.put("big", value)
    entry = await target.kv.get("big")
    assert entry is not None
    assert len(entry.value) == MAX_VALUE_BYTES
    assert hashlib.sha256(entry.value).digest() == hashlib.sha256(value).digest()


async def test_value_one_byte_over_25_mib_is_refused(target: Target) -> None:
    with pytest.raises(ValueTooLarge, match="Value length of 26214401 exceeds limit of 26214400"):
        await target.kv.put("big", b"\0" * (MAX_VALUE_BYTES + 1))
    assert await target.kv.get("big") is None


# -- metadata limit -----------------------------------------------------------------------


def metadata_of_size(size: int) -> dict[str, str]:
    meta = {"p": ""}
    meta["p"] = "x" * (size - len('{"p":""}'))
    return meta


async def test_metadata_of_exactly_1024_bytes_is_accepted(target: Target) -> None:
    meta = metadata_of_size(1024)
    await target.kv.put("m", b"v", metadata=meta)
    entry = await target.kv.get("m")
    assert entry is not None
    assert entry.metadata == meta


async def test_metadata_of_1025_bytes_is_refused(target: Target) -> None:
    with pytest.raises(MetadataTooLarge, match="Metadata length of 1025 exceeds limit of 1024"):
        await target.kv.put("m", b"v", metadata=metadata_of_size(1025))
    assert await target.kv.get("m") is None


async def test_metadata_size_counts_utf8_bytes(target: Target) -> None:
    meta = {"p": "é" * 509}  # 8 + 1018 = 1026 bytes, 517 characters
    with pytest.raises(MetadataTooLarge):
        await target.kv.put("m", b"v", metadata=meta)


async def test_metadata_must_be_json(target: Target) -> None:
    with pytest.raises(InvalidMetadata):
        await target.kv.put("m", b"v", metadata={"s": {1, 2}})  # type: ignore[dict-item]
    with pytest.raises(InvalidMetadata):
        await target.kv.put("m", b"v", metadata={"nan": float("nan")})
    assert await target.kv.get("m") is None


async def test_metadata_that_would_not_read_back_equal_is_refused(target: Target) -> None:
    with pytest.raises(InvalidMetadata):
        await target.kv.put("m", b"v", metadata={1: "int keys become strings"})  # type: ignore[dict-item]
    with pytest.raises(InvalidMetadata):
        await target.kv.put("m", b"v", metadata={"a": "\ud800"})  # lone surrogate
    assert await target.kv.get("m") is None


async def test_bulk_get_of_values_over_25_mib_in_total_still_reads_them(target: Target) -> None:
    """bulk/get returns at most 25 MB of values per request: bigger answers are split."""
    big = {f"g{i}": os.urandom(9 * 1024 * 1024).hex()[: 13 * 1024 * 1024] for i in range(2)}
    for key, value in big.items():
        await target.kv.put(key, value)
    got = await target.kv.get_many([*big, "absent"])
    assert got["absent"] is None
    for key, value in big.items():
        entry = got[key]
        assert entry is not None
        assert entry.value == value.encode()
