"""A source that did not change in meaning: verify reports no difference and a second run
writes nothing (each case failed before its fix)."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis

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
