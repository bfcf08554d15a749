"""A key's exact expiry is the moment its PTTL was read plus that PTTL, however long the
rest of its SCAN step takes to read (big values are read after the batch script, one by
one): a slow read must neither move the expiry on KV nor make verify or a second run
see a different expiry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from brainbot.composition import open_namespace
from brainbot.migration.source import SMALL_BYTES, Reader, Record
from brainbot.migration.transform import Options, plan
from tests.support.migration import migrate, roll_back, settings_for, verify_kv

SLOW_SECONDS = 30.0


def slow_big_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each value read on its own (after the batch script) takes ``SLOW_SECONDS``: a slow
    link or a busy source, without the test waiting for it. The clock moves on, and so
    do the source's TTLs."""
    real_time, read_alone = time.time, Reader._read_alone
    skew = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + skew[0])

    async def slow(self: Reader, record: Record, count: int) -> None:
        await read_alone(self, record, count)
        skew[0] += SLOW_SECONDS
        async for key in self.redis.scan_iter():
            left = await self.redis.pttl(key)
            if left > 0:
                await self.redis.pexpire(key, left - int(SLOW_SECONDS * 1000))

    monkeypatch.setattr(Reader, "_read_alone", slow)


async def _source(source: aioredis.Redis) -> int:
    """A key with a known exact expiry, in one SCAN step with a big string; the expiry."""
    expire_at = int(time.time() * 1000) + 3_600_000
    await source.set("g:ttl", "v")
    await source.pexpireat("g:ttl", expire_at)
    await source.set("g:big", b"x" * (SMALL_BYTES + 1))
    return expire_at


async def _exact_expiry(tmp_path: Path, key: str) -> Any:
    settings = settings_for(tmp_path)
    async with open_namespace(settings, purpose="bulk") as kv:
        entry = await kv.get(settings.kv_prefix + key)
    assert entry is not None
    return entry.metadata["x"]


async def test_a_slow_read_does_not_move_the_expiry_written_to_kv(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the expiry was counted from when the whole piece had been read, 30 s late."""
    expire_at = await _source(source)
    slow_big_reads(monkeypatch)
    await migrate(redis_url, settings_for(tmp_path), verify_after=False)
    assert abs(await _exact_expiry(tmp_path, "g:ttl") - expire_at) < 1_000


async def test_a_slow_read_is_not_an_expiry_difference_for_verify_or_a_second_run(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "expiry differs by 30000 ms", and the second run wrote the key again."""
    settings = settings_for(tmp_path)
    await _source(source)
    assert (await migrate(redis_url, settings)).verify_differences == 0
    slow_big_reads(monkeypatch)
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert report.differences == []
    second = await migrate(redis_url, settings, verify_after=False)
    assert second.entries.get("written", 0) == 0, second.entries


def test_a_key_read_with_zero_ms_left_keeps_its_expiry() -> None:
    """PTTL answers 0 for a key that expires in this very millisecond (Redis calls it
    expired only once the clock passes its expiry). Before: migrated without any TTL."""
    now = int(time.time() * 1000)
    record = Record(b"g:last-ms", "string", b"v", 0)
    (item,) = plan(record, Options(), now).items
    assert isinstance(item.metadata, dict)
    assert item.metadata.get("x") == now
    assert item.expiration is not None
    skipped = plan(record, Options(short_ttl="skip"), now)
    assert skipped.skipped == "under 60 s left (policy: skip)"


async def test_a_key_read_in_its_last_millisecond_is_not_restored_for_ever(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch script answering PTTL 0 for one key (its last millisecond): KV gets its
    exact expiry, and a rollback does not restore it to Redis. Before: migrated and
    restored without any TTL, a key that lives for ever."""
    settings = settings_for(tmp_path)
    await source.set("g:last-ms", "v")
    await source.expire("g:last-ms", 3600)
    read_scripted = Reader._read_scripted

    async def last_ms(self: Reader, keys: Any) -> Any:
        records, alone = await read_scripted(self, keys)
        for record in records:
            record.pttl = 0
        return records, alone

    monkeypatch.setattr(Reader, "_read_scripted", last_ms)
    report = await migrate(redis_url, settings, verify_after=False)
    assert isinstance(await _exact_expiry(tmp_path, "g:last-ms"), int)
    monkeypatch.undo()
    await source.flushdb()
    result = await roll_back(report.run_id, settings, delete_kv=True, restore_to=redis_url)
    assert result.redis_restored == 0
    assert await source.exists("g:last-ms") == 0
