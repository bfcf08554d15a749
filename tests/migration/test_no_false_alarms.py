"""A source that did not change in meaning: verify reports no difference and a second run
writes nothing (each case failed before its fix)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from brainbot.composition import open_namespace
from brainbot.migration.verify import _Check
from tests.support.migration import migrate, settings_for, verify_kv


async def test_two_legacy_messages_with_one_id_are_one_message_everywhere(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Elements that carry the same id are one message on KV, the last one. Before: the
    plan held both, so verify compared KV's entry with the first ("value differs") and
    every run wrote (and backed up) the entry again."""
    settings = settings_for(tmp_path)
    mid = "8299999999999.abcdefgh"
    await source.rpush(
        "conversation:c1",
        json.dumps({"role": "user", "content": "first", "id": mid}),
        json.dumps({"role": "user", "content": "second", "id": mid}),
        json.dumps({"role": "assistant", "content": "third"}),
    )
    first = await migrate(redis_url, settings)
    assert first.verify_differences == 0
    assert first.kv_entries == 2
    for lanes in (1, 2):
        report = await verify_kv(redis_url, settings, lanes=lanes, recheck_after=0)
        assert report.differences == []
        assert report.entries == 2
    second = await migrate(redis_url, settings)
    assert second.entries == {"unchanged (already written by this migration)": 2}


async def test_an_entry_kv_let_expire_while_verify_ran_is_not_missing(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key verify read with 30 s left, whose name the listing reached after KV let the
    entry expire (a listing of millions of entries takes minutes): by the recheck it is
    gone for every reader, as from Redis. Before: "missing in KV". One with an hour left
    is still missing."""
    settings = settings_for(tmp_path)
    await source.set("g:short", "v", px=30_000)
    await source.set("g:hour", "v", px=3_600_000)
    assert (await migrate(redis_url, settings)).verify_differences == 0
    async with open_namespace(settings, purpose="bulk") as kv:  # as KV's expiry, unseen
        await kv.delete_many([settings.kv_prefix + "g:short", settings.kv_prefix + "g:hour"])
    real_time, read_values = time.time, _Check.read_values

    async def two_minutes_later(self: Any, recheck_after: float) -> None:
        monkeypatch.setattr(time, "time", lambda: real_time() + 120)
        await read_values(self, recheck_after)

    monkeypatch.setattr(_Check, "read_values", two_minutes_later)
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert {d.key: d.problem for d in report.differences} == {"g:hour": "missing in KV"}
