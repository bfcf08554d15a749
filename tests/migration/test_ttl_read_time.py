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
from tests.support.migration import migrate, settings_for, verify_kv

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
