"""What ``verify`` must not call a match: each case found by a review that tried to make it
say "no differences" while KV did not hold the source's data (each failed before its fix)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

from brainbot.config import Settings
from brainbot.kv import EmbeddedKV, iter_keys
from brainbot.kv.namespace import PutItem
from brainbot.migration import Options
from brainbot.migration.ledger import Expected, Ledger, expiry_floor, shape_of
from brainbot.storage import KVStore
from brainbot.storage.conversations import ConversationStore
from tests.support.kv import rest_client
from tests.support.migration import migrate, settings_for, verify_kv
from tests.support.processes import Service


async def problems(redis_url: str, settings: Settings) -> dict[str, str]:
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    return {d.key: d.problem for d in report.differences}


async def test_a_conversations_ttl_is_compared_not_only_its_presence(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Messages carry no exact expiry in metadata: KV's own expiry is what says when they
    go. Before: a TTL moved from an hour to 30 days in Redis was "no differences"."""
    settings = settings_for(tmp_path)
    await source.rpush("conversation:c1", json.dumps({"role": "user", "content": "hi"}))
    await source.expire("conversation:c1", 3600)
    assert (await migrate(redis_url, settings)).verify_differences == 0
    await source.expire("conversation:c1", 30 * 86_400)
    assert "KV's own expiry differs" in (await problems(redis_url, settings))["conversation:c1"]


async def test_an_encoding_change_is_a_difference(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """[b"\\xff", b"a"] is stored as base64 text with "e": "b"; the text list
    ["/w==", "YQ=="] has the same JSON without it. Before: the same digest, so a match."""
    settings = settings_for(tmp_path)
    await source.rpush("g:list", b"\xff", b"a")
    assert (await migrate(redis_url, settings)).verify_differences == 0
    await source.delete("g:list")
    await source.rpush("g:list", "/w==", "YQ==")
    assert "metadata differs" in (await problems(redis_url, settings))["g:list"]


async def test_what_the_source_no_longer_holds_is_reported(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: verify only looked for what the source has; KV entries of keys deleted from
    Redis since, and owners the source no longer names, were never seen. An owner whose
    conversation nobody claims any more (its session expired in Redis) keeps access: not
    a difference."""
    settings = settings_for(tmp_path)
    await source.set("g:kept", "v")
    await source.set("g:deleted", "v")
    await source.rpush("conversation:gone", json.dumps({"role": "user", "content": "hi"}))
    await source.sadd("user:alice:conversations", "c1")
    await source.sadd("user:bob:conversations", "c2")
    await source.sadd("user:dave:conversations", "c3")
    assert (await migrate(redis_url, settings)).verify_differences == 0
    await source.delete("g:deleted", "conversation:gone")
    await source.srem("user:bob:conversations", "c2")
    await source.sadd("user:carol:conversations", "c2")  # c2 is carol's now
    await source.sadd("user:mallory:conversations", "c1")  # c1 now claimed twice: nobody's
    await source.delete("user:dave:conversations")  # c3: named by nobody any more
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert sorted((d.key, d.problem) for d in report.differences) == [
        ("(owner of conversation c1)", "an owner on KV that the source no longer names"),
        ("(owner of conversation c2)", "an owner on KV that the source no longer names"),
        ("(owner of conversation c2)", "missing in KV"),  # carol's: the next run writes it
        ("conversation gone", "1 message(s) on KV, the conversation is not in Redis"),
        ("g:deleted", "on KV (migrated), not in the source: deleted from Redis since?"),
    ]


async def test_kv_expiring_an_entry_early_is_a_difference(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A writer kept the value and metadata (stamp and exact expiry) but gave the entry a
    KV expiry of two minutes: KV would delete it a day early. Before: not compared."""
    settings = settings_for(tmp_path)
    await source.set("g:day", "v", ex=86_400)
    assert (await migrate(redis_url, settings)).verify_differences == 0
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        entry = await kv.get("g:day")
        assert entry is not None
        await kv.put("g:day", entry.value, expiration_ttl=120, metadata=entry.metadata)
    assert "KV's own expiry differs" in (await problems(redis_url, settings))["g:day"]


async def test_a_message_summary_rewritten_under_the_stamp_is_a_difference(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """History shows small messages from their metadata ("r", "c"), not their value. Before:
    only the value's digest was compared, so a rewritten summary passed."""
    settings = settings_for(tmp_path)
    await source.rpush("conversation:c1", json.dumps({"role": "user", "content": "hello"}))
    assert (await migrate(redis_url, settings)).verify_differences == 0
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        (name,) = [k.name async for k in iter_keys(kv, prefix="conv/")]
        entry = await kv.get(name)
        assert entry is not None
        assert isinstance(entry.metadata, dict)
        forged = {**entry.metadata, "r": "system", "c": "EVIL"}
        await kv.put(name, entry.value, metadata=forged)
    assert "metadata differs" in (await problems(redis_url, settings))["conversation:c1"]


async def test_the_sample_reaches_every_part_of_the_ledger(tmp_path: Path) -> None:
    """Before: twice n rows drawn, the first n in rowid order kept: the last half of the
    entries (a whole verify lane, the owners' entries) was never sampled."""
    async with EmbeddedKV(tmp_path / "kv.sqlite3") as kv:
        names = [f"k{i:04d}" for i in range(300)]
        stamp = {"_m": "abcd1234.run1." + "a" * 24}
        await kv.put_many([PutItem(n, b"v", metadata=stamp) for n in names])
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        await ledger.load(kv, "")
    ledger.expect(
        [Expected(n.encode(), n, "a" * 24, "string", 0, None, None, shape_of({})) for n in names]
    )
    ledger.expected_all()
    thirds: Counter[int] = Counter()
    for _ in range(30):
        picked = ledger.sample(100, 5_000, expiry_floor(5_000))
        assert len(picked) == 100
        thirds.update(int(p.report[1:]) // 100 for p in picked)
    ledger.close()
    assert min(thirds[t] for t in range(3)) > 600  # about 1,000 each of 3,000 picks


async def test_through_cloudflares_simulator_a_second_run_and_verify_see_the_same_entries(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, miniflare: Service, api_token: str
) -> None:
    """Workers keep metadata as JavaScript values: a message time of 1700000000.0 comes
    back as 1700000000, 1e20 as 100000000000000000000. The comparison of metadata must not
    see a change there; and an integer past 2**53 (a snowflake id), which would come back
    rounded, stays out of the metadata (the message is read from its value)."""
    prefix = f"t{secrets.token_hex(4)}/"
    settings = Settings(  # type: ignore[call-arg]
        BRAINBOT_DATA_DIR=tmp_path / "data", BRAINBOT_KV_PREFIX=prefix
    )
    await source.set("g:plain", "v")
    await source.set("g:ttl", "v", ex=86_400)
    await source.hset("g:hash", mapping={"a": "1", "b": "2"})
    await source.rpush("g:binary", b"\xff", b"a")
    await source.rpush(
        "conversation:c1",
        json.dumps({"role": "user", "content": "hi", "timestamp": 1_700_000_000}),
        json.dumps({"role": "assistant", "content": "yes", "timestamp": 1_700_000_001.5}),
    )
    snowflake = {"role": "user", "content": "id", "message_id": 1234567890123456789, "r": 1e20}
    await source.rpush("conversation:c2", json.dumps(snowflake))
    await source.sadd("user:alice:conversations", "c1")
    async with rest_client(miniflare.url, api_token, "miniflare") as kv:
        first = await migrate(redis_url, settings, namespace=kv)
        assert first.verify_differences == 0
        second = await migrate(redis_url, settings, namespace=kv)
        assert second.entries == {"unchanged (already written by this migration)": 8}
        assert second.verify_differences == 0
        async with KVStore(kv, prefix=prefix) as store:
            (message,) = await ConversationStore(store).history("c2", limit=10)
    assert message.metadata == {"message_id": 1234567890123456789, "r": 1e20}


async def test_a_key_that_expired_in_redis_and_for_kv_readers_is_not_a_difference(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """KV keeps an entry at least 60 s, past its exact expiry (which every read honours):
    listed, but gone for readers as it is gone from Redis."""
    settings = settings_for(tmp_path)
    await source.set("g:brief", "v", px=1_500)
    assert (await migrate(redis_url, settings, verify_after=False)).kv_entries == 1
    await asyncio.sleep(2)
    assert await source.exists("g:brief") == 0
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        assert [k.name async for k in iter_keys(kv)] == ["g:brief"]  # still listed
    assert await problems(redis_url, settings) == {}


async def test_a_key_the_replan_skips_for_its_short_ttl_is_not_reported_gone(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Migrated with 61.5 s left; verify re-plans it with under 60 s left, which
    ``--short-ttl skip`` skips. Before: "on KV (migrated), not in the source"."""
    settings = settings_for(tmp_path)
    await source.set("g:minute", "v", px=61_500)
    options = Options(short_ttl="skip")
    assert (await migrate(redis_url, settings, options=options, verify_after=False)).kv_entries == 1
    await asyncio.sleep(2)
    report = await verify_kv(redis_url, settings, options=options, lanes=1, recheck_after=0)
    assert report.skipped == {"under 60 s left (policy: skip)": 1}
    assert report.differences == []


async def test_verify_says_when_it_cannot_see_what_the_source_no_longer_holds(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Verify finds this migration's entries by its mark, made of the source URL and the
    options: with other options it finds none. Before: silently nothing reported."""
    settings = settings_for(tmp_path)
    await source.set("g:1", "v")
    await migrate(redis_url, settings, verify_after=False)
    await source.delete("g:1")
    await source.set("g:2", "v")
    other = Options(conversation_pattern="chat:{id}")
    report = await verify_kv(redis_url, settings, options=other, lanes=1, recheck_after=0)
    assert [d.key for d in report.differences] == ["g:2"]  # missing; g:1 not looked for
    assert "No KV entry carries this migration's mark" in report.notes[0]
    same = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert same.notes == []
    assert sorted(d.key for d in same.differences) == ["g:1", "g:2"]
