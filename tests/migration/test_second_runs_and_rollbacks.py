"""Runs after runs: a resumed run, a second run after the source or KV moved on, and the
rollbacks of both, as an unlucky operator meets them (each case found by a review of the
migration and failing on the code before its fix)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from brainbot.config import Settings
from brainbot.errors import MigrationError, RollbackError
from brainbot.kv import EmbeddedKV
from brainbot.kv.namespace import BulkResult, PutItem
from brainbot.migration import Options
from brainbot.migration import run as run_module
from brainbot.migration.run import NOT_RECREATED
from brainbot.storage import KVStore
from brainbot.storage.conversations import ConversationStore, Message
from tests.support.migration import migrate, roll_back, settings_for, values

UNCHANGED = "unchanged (already written by this migration)"
OVERWRITTEN = "overwritten (its KV value backed up)"


class Killed(Exception):
    """The process died here (fault injection)."""


class DiesAfterWrites(EmbeddedKV):
    """The embedded KV, where the process dies right after ``writes`` bulk writes landed:
    before the run could checkpoint them (a SIGKILL at the worst moment)."""

    def __init__(self, path: Path, writes: int) -> None:
        super().__init__(path)
        self.left = writes

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        result = await super().put_many(items)
        self.left -= 1
        if self.left <= 0:
            raise Killed
        return result


async def killed_run(redis_url: str, settings: Settings, writes: int, **options: object) -> str:
    """Start a run that dies after ``writes`` bulk writes; returns its run id."""
    runs = settings.data_dir / "migrations"
    before = set(runs.glob("*/state.json"))
    async with DiesAfterWrites(settings.embedded_kv_path, writes) as kv:
        with pytest.raises(Killed):
            await migrate(redis_url, settings, namespace=kv, verify_after=False, **options)
    (started,) = set(runs.glob("*/state.json")) - before
    return started.parent.name


async def test_a_resumed_overwrite_run_rolls_back_what_its_killed_attempt_replaced(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the resume called the entries its killed attempt wrote "unchanged" and left
    them out of its manifest, so rollback neither deleted them nor gave the bot's values
    back."""
    settings = settings_for(tmp_path)
    names = [f"g:{i}" for i in range(6)]
    for name in names:
        await source.set(name, f"redis {name}")
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put_many([PutItem(name, f"bot {name}".encode()) for name in names[:3]])
    run_id = await killed_run(
        redis_url, settings, 1, overwrite=True, batch_entries=2, in_flight=1, scan_count=2
    )
    resumed = await migrate(redis_url, settings, resume=True, overwrite=True, verify_after=False)
    assert resumed.run_id == run_id
    assert resumed.resumed  # (before: False for a run killed before its first checkpoint)
    assert resumed.entries[UNCHANGED] == 0  # its own attempt's writes are its writes
    assert await values(settings, names) == {n: f"redis {n}".encode() for n in names}
    undone = await roll_back(run_id, settings, delete_kv=True)
    assert undone.kv_restored == 3
    assert undone.kv_deleted == 3
    assert await values(settings, names) == {
        **{n: f"bot {n}".encode() for n in names[:3]},
        **dict.fromkeys(names[3:]),
    }


async def test_a_rollback_gives_back_the_last_value_the_run_replaced(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The bot wrote between the killed attempt and the resume, which replaced that write
    too. Before: rollback restored the first backup (the older bot value)."""
    settings = settings_for(tmp_path)
    await source.set("g:1", "redis")
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put("g:1", b"bot old")
    run_id = await killed_run(redis_url, settings, 1, overwrite=True)
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put("g:1", b"bot new")
    resumed = await migrate(redis_url, settings, resume=True, overwrite=True, verify_after=False)
    assert resumed.entries[OVERWRITTEN] == 1
    undone = await roll_back(run_id, settings, delete_kv=True)
    assert undone.kv_restored == 1
    assert await values(settings, ["g:1"]) == {"g:1": b"bot new"}


async def test_overwritten_owner_entries_are_backed_up_and_rolled_back(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the owners' entries went out without their KV values backed up, and
    rollback deleted the bot's own ownership record."""
    settings = settings_for(tmp_path)
    async with KVStore(EmbeddedKV(settings.embedded_kv_path), write_interval=0) as store:
        conversations = ConversationStore(store)
        cid = await conversations.create("alice")
        await conversations.append(cid, Message("user", "hello"))
    await source.sadd("user:alice:conversations", cid)
    forced = await migrate(redis_url, settings, overwrite=True, verify_after=False)
    assert forced.entries[OVERWRITTEN] == 1
    undone = await roll_back(forced.run_id, settings, delete_kv=True)
    assert undone.kv_restored == 1
    async with KVStore(EmbeddedKV(settings.embedded_kv_path), write_interval=0) as store:
        assert await ConversationStore(store).owns(cid, "alice")


async def test_a_ttl_or_encoding_changed_in_redis_reaches_kv_on_the_next_run(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the digest covers the value only, so a run called these "unchanged" and
    never wrote them, and verify failed after every run."""
    settings = settings_for(tmp_path)
    await source.set("g:ttl", "v", ex=3600)
    await source.rpush("g:list", b"\xff", b"a")  # binary: stored as base64 on KV
    first = await migrate(redis_url, settings)
    assert first.verify_differences == 0
    await source.persist("g:ttl")
    await source.delete("g:list")
    await source.rpush("g:list", "/w==", "YQ==")  # the same JSON on KV, as text this time
    second = await migrate(redis_url, settings)
    assert second.entries["written"] == 2
    assert second.verify_differences == 0
    async with KVStore(EmbeddedKV(settings.embedded_kv_path), write_interval=0) as kv:
        assert await kv.pttl("g:ttl") == -1
        assert await kv.lrange("g:list", 0, -1) == [b"/w==", b"YQ=="]


async def test_an_entry_that_expired_on_kv_is_written_again(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry KV let expire is not one the bot deleted. Before: the next run called it
    "not re-created: deleted on KV" while Redis had extended its TTL."""
    settings = settings_for(tmp_path)
    await source.set("g:short", "important", ex=61)
    await migrate(redis_url, settings, verify_after=False)
    await source.expire("g:short", 86_400)
    later = time.time() + 300  # the next run, five minutes on: KV has dropped the entry
    monkeypatch.setattr(
        run_module, "time", SimpleNamespace(time=lambda: later, monotonic=time.monotonic)
    )
    async with EmbeddedKV(settings.embedded_kv_path, clock=lambda: later) as kv:
        assert await kv.get("g:short") is None
        second = await migrate(redis_url, settings, namespace=kv, verify_after=False)
        assert second.entries[NOT_RECREATED] == 0
        assert second.entries["written"] == 1
        entry = await kv.get("g:short")
    assert entry is not None
    assert entry.value == b"important"


async def test_the_same_migration_after_a_rollback_writes_everything_again(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the rolled-back run's manifest still said "written before", so every key
    counted as deleted by the bot and nothing was written."""
    settings = settings_for(tmp_path)
    for i in range(3):
        await source.set(f"g:{i}", f"v{i}")
    first = await migrate(redis_url, settings, verify_after=False)
    undone = await roll_back(first.run_id, settings, delete_kv=True)
    assert undone.kv_deleted == 3
    again = await migrate(redis_url, settings)
    assert again.entries["written"] == 3
    assert again.verify_differences == 0


async def test_a_rolled_back_unfinished_run_is_not_resumed(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    for i in range(4):
        await source.set(f"g:{i}", f"v{i}")
    run_id = await killed_run(redis_url, settings, 1, batch_entries=2, in_flight=1, scan_count=2)
    await roll_back(run_id, settings, delete_kv=True)
    with pytest.raises(Exception, match="Nothing to resume"):
        await migrate(redis_url, settings, resume=True, verify_after=False)


async def test_a_replaced_value_with_under_a_minute_left_is_restored_not_refused(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """KV refuses expiries under 60 s. Before: one such backed-up value failed the whole
    rollback, and nothing was restored."""
    settings = settings_for(tmp_path)
    await source.set("a", "redis a")
    await source.set("b", "redis b")
    now = time.time()
    async with EmbeddedKV(settings.embedded_kv_path, clock=lambda: now - 30) as kv:
        await kv.put("a", b"bot a", expiration=int(now) + 40)  # written 30 s ago, ttl 70 s
        await kv.put("b", b"bot b")
    forced = await migrate(redis_url, settings, overwrite=True, verify_after=False)
    assert forced.entries[OVERWRITTEN] == 2
    undone = await roll_back(forced.run_id, settings, delete_kv=True)
    assert undone.kv_restored == 2
    assert await values(settings, ["a", "b"]) == {"a": b"bot a", "b": b"bot b"}
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        entry = await kv.get("a")
    assert entry is not None
    assert entry.expiration is not None
    assert entry.expiration <= int(time.time()) + 62  # KV's floor, not later


async def test_a_migration_in_use_by_another_process_is_not_run_resumed_or_rolled_back(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: a ``--resume`` (or a rollback) while the run was still under way in another
    process wrote the run's state and manifest from a stale checkpoint beside it; and two
    fresh runs of one migration at once each counted the other's entries as its own (a
    rollback of one then deleted what the other had migrated)."""
    settings = settings_for(tmp_path)
    for i in range(4):
        await source.set(f"g:{i}", f"v{i}")
    run_id = await killed_run(redis_url, settings, 1, batch_entries=2, in_flight=1, scan_count=2)
    runs = settings.data_dir / "migrations"
    lock = runs / (json.loads((runs / run_id / "state.json").read_text())["mark"] + ".lock")
    holder = await asyncio.create_subprocess_exec(  # another process, working on the run
        sys.executable,
        "-c",
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        str(lock),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        with pytest.raises(MigrationError, match="in use by another brainbot process"):
            await migrate(redis_url, settings, resume=True, verify_after=False)
        with pytest.raises(RollbackError, match="in use by another brainbot process"):
            await roll_back(run_id, settings, delete_kv=True)
        with pytest.raises(MigrationError, match="in use by another brainbot process"):
            await migrate(redis_url, settings, verify_after=False)  # a fresh run
        assert len(list(runs.glob("*/state.json"))) == 1  # and it left no run behind
    finally:
        holder.kill()
        await holder.wait()
    resumed = await migrate(redis_url, settings, resume=True)  # the holder is gone
    assert resumed.run_id == run_id
    assert resumed.verify_differences == 0


async def test_rolling_back_a_run_that_rewrote_an_earlier_runs_entry_gives_that_entry_back(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the second run rewrote the first run's entry without a backup, its rollback
    deleted it, and every later run called the key "deleted on KV" and never wrote it."""
    settings = settings_for(tmp_path)
    await source.set("k", "v1")
    await migrate(redis_url, settings, verify_after=False)
    await source.set("k", "v2")
    second = await migrate(redis_url, settings, verify_after=False)
    assert second.entries["written"] == 1
    undone = await roll_back(second.run_id, settings, delete_kv=True)
    assert undone.kv_restored == 1
    assert await values(settings, ["k"]) == {"k": b"v1"}  # the first run's entry, as it was
    third = await migrate(redis_url, settings)
    assert third.entries["written"] == 1
    assert third.verify_differences == 0


async def test_the_last_run_that_wrote_a_key_says_when_it_expires(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1 wrote the key with no TTL, run 2 with the TTL Redis gave it since; KV let run
    2's entry expire. Before: run 1's "no expiry" won, and the key was never re-created."""
    settings = settings_for(tmp_path)
    await source.set("k", "v")
    await migrate(redis_url, settings, verify_after=False)
    await source.expire("k", 120)
    assert (await migrate(redis_url, settings, verify_after=False)).entries["written"] == 1
    await source.expire("k", 86_400)
    later = time.time() + 600
    monkeypatch.setattr(
        run_module, "time", SimpleNamespace(time=lambda: later, monotonic=time.monotonic)
    )
    async with EmbeddedKV(settings.embedded_kv_path, clock=lambda: later) as kv:
        third = await migrate(redis_url, settings, namespace=kv, verify_after=False)
        assert third.entries == {"written": 1}


async def test_rolling_back_a_killed_run_undoes_what_it_wrote_after_its_last_checkpoint(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A killed --overwrite run, then a fresh run (no --resume), which finds the killed
    run's entries and leaves them. Before: the killed run's writes were in no manifest, so
    no rollback gave the bot's values back (they sat in its kv-backup)."""
    settings = settings_for(tmp_path)
    names = ["a", "b", "c"]
    for name in names:
        await source.set(name, f"redis {name}")
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put_many([PutItem(name, f"bot {name}".encode()) for name in names])
    killed = await killed_run(redis_url, settings, 1, overwrite=True)
    fresh = await migrate(redis_url, settings, verify_after=False)
    assert fresh.entries == {UNCHANGED: 3}
    undone = await roll_back(killed, settings, delete_kv=True)
    assert undone.kv_restored == 3
    assert await values(settings, names) == {n: f"bot {n}".encode() for n in names}


async def test_a_key_scan_gives_twice_is_backed_up_once_as_it_was_before_the_run(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCAN may return a key twice. The second time, the run's own entry was on KV, and the
    run backed it up as if it were the bot's: rollback then "restored" the run's value."""
    settings = settings_for(tmp_path)
    await source.set("k", "redis")
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put("k", b"bot")
    real = run_module.scan_batches

    async def twice(*args: object, **kwargs: object) -> AsyncIterator[tuple[int, list[bytes]]]:
        steps = [step async for step in real(*args, **kwargs)]  # type: ignore[arg-type]
        for step in steps[:-1]:
            yield step
        yield 1, steps[-1][1]
        await asyncio.sleep(0.5)  # the first write of the key lands meanwhile
        yield steps[-1]  # the key once more, in a step of its own

    monkeypatch.setattr(run_module, "scan_batches", twice)
    forced = await migrate(redis_url, settings, overwrite=True, verify_after=False, batch_entries=1)
    undone = await roll_back(forced.run_id, settings, delete_kv=True)
    assert undone.kv_restored == 1
    assert await values(settings, ["k"]) == {"k": b"bot"}


async def test_rolling_back_out_of_order_does_not_bring_back_an_undone_run(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Run A wrote k, run B rewrote it (backing A's entry up). Rolling back A (k is B's:
    kept), then B, gave A's entry back, though A was rolled back."""
    settings = settings_for(tmp_path)
    await source.set("k", "v1")
    first = await migrate(redis_url, settings, verify_after=False)
    await source.set("k", "v2")
    second = await migrate(redis_url, settings, verify_after=False)
    assert (await roll_back(first.run_id, settings, delete_kv=True)).kv_kept
    undone = await roll_back(second.run_id, settings, delete_kv=True)
    assert undone.kv_deleted == 1
    assert await values(settings, ["k"]) == {"k": None}


async def test_a_resume_reads_the_runs_state_again_under_its_lock(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run was chosen from a state read before the lock; a rollback ended it since.
    Before: the resume wrote that stale state back and carried on from its cursor."""
    settings = settings_for(tmp_path)
    for i in range(4):
        await source.set(f"g:{i}", f"v{i}")
    run_id = await killed_run(redis_url, settings, 1, batch_entries=2, in_flight=1, scan_count=2)
    runs = settings.data_dir / "migrations"
    stale = run_module._states(runs, run_module.fingerprint(redis_url, None, None, Options()))
    await roll_back(run_id, settings, delete_kv=True)
    monkeypatch.setattr(run_module, "_states", lambda *_: stale)
    with pytest.raises(MigrationError, match="rolled back meanwhile"):
        await migrate(redis_url, settings, resume=True, verify_after=False)
    state = json.loads((runs / run_id / "state.json").read_text())
    assert state["rolled_back_at"]


async def test_a_partial_rollback_keeps_the_keys_it_left_protected(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A rollback that kept a key (the bot changed it) used to mark the whole run as never
    run: once the bot deleted that key, the next run brought it back."""
    settings = settings_for(tmp_path)
    await source.set("a", "v")
    await source.set("b", "v")
    first = await migrate(redis_url, settings, verify_after=False)
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put("b", b"the bot")
    undone = await roll_back(first.run_id, settings, delete_kv=True)
    assert (undone.kv_deleted, sum(undone.kv_kept.values())) == (1, 1)
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.delete("b")  # the bot deletes it
    again = await migrate(redis_url, settings, verify_after=False)
    assert again.entries == {"written": 1, NOT_RECREATED: 1}
    assert await values(settings, ["a", "b"]) == {"a": b"v", "b": None}


async def test_a_run_killed_after_its_last_checkpoint_resumes_without_reading_again(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """SCAN's last cursor is 0, its first too. Before: a run killed while writing the
    owners' entries (after its last checkpoint) resumed from the start and counted every
    key twice."""
    settings = settings_for(tmp_path)
    for i in range(3):
        await source.set(f"g:{i}", f"v{i}")
    await source.sadd("user:alice:conversations", "c1")
    run_id = await killed_run(redis_url, settings, 2)  # the keys' write, then the owners'
    resumed = await migrate(redis_url, settings, resume=True)
    assert resumed.run_id == run_id
    assert resumed.keys_seen == 4
    assert resumed.entries == {"written": 4}
    assert resumed.verify_differences == 0


async def test_a_rollback_that_gives_an_earlier_runs_entry_back_keeps_its_record(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Run A wrote k, run B rewrote it, rolling B back gave A's entry back. Before: the
    rollback recorded k as undone, the migration forgot A wrote it, and once the bot
    deleted k the next run brought it back."""
    settings = settings_for(tmp_path)
    await source.set("k", "v1")
    await migrate(redis_url, settings, verify_after=False)
    await source.set("k", "v2")
    second = await migrate(redis_url, settings, verify_after=False)
    assert (await roll_back(second.run_id, settings, delete_kv=True)).kv_restored == 1
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.delete("k")  # the bot deletes it
    third = await migrate(redis_url, settings, verify_after=False)
    assert third.entries == {NOT_RECREATED: 1}
    assert await values(settings, ["k"]) == {"k": None}
