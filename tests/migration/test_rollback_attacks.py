"""Rollbacks that meet the worst moments: killed partway and run again, a target Redis
whose clock runs ahead, a backup that is damaged (each case failing on the code before
its fix)."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import json
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from brainbot.composition import migration_runs
from brainbot.errors import RollbackError
from brainbot.kv import EmbeddedKV
from brainbot.kv.namespace import BulkResult, PutItem
from brainbot.migration import rollback
from brainbot.migration.run import NOT_RECREATED
from tests.support.migration import migrate, roll_back, settings_for, values

rollback_module = importlib.import_module("brainbot.migration.rollback")


class Killed(Exception):
    """The process died here (fault injection)."""


class DiesAfterDeleting(EmbeddedKV):
    """The embedded KV, where the process dies right after a bulk delete landed: before
    the rollback could record what it deleted (a SIGKILL at the worst moment)."""

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        await super().delete_many(keys)
        raise Killed


async def test_a_rollback_killed_right_after_deleting_lets_later_runs_write_again(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the keys were recorded as undone only after the delete request, so a rollback
    killed in between left them deleted yet counted as written, and every later run called
    them "deleted on KV" and never wrote them again."""
    settings = settings_for(tmp_path)
    for i in range(3):
        await source.set(f"g:{i}", f"v{i}")
    first = await migrate(redis_url, settings, verify_after=False)
    runs = migration_runs(settings)
    async with DiesAfterDeleting(settings.embedded_kv_path) as kv:
        with pytest.raises(Killed):
            await rollback(first.run_id, runs=runs, namespace=kv, delete_kv=True)
    again = await roll_back(first.run_id, settings, delete_kv=True)  # run again: finishes
    assert again.kv_absent == 3
    second = await migrate(redis_url, settings)
    assert second.entries[NOT_RECREATED] == 0
    assert second.entries["written"] == 3
    assert second.verify_differences == 0


async def test_a_key_whose_ttl_runs_out_on_the_target_before_its_restore_is_counted(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the scratch key expired at once (PEXPIREAT in the target's past), RENAMENX
    found no such key, and the whole restore failed with a Redis error (again on every
    attempt while the clocks disagreed) instead of counting the key as expired."""
    settings = settings_for(tmp_path)
    await source.set("short", "v", px=1_500)
    for i in range(3):
        await source.set(f"g:{i}", f"v{i}")
    first = await migrate(redis_url, settings, verify_after=False)
    await source.flushdb()
    await asyncio.sleep(2)  # the short key's TTL has run out by Redis's clock
    lagging = time.time() - 10  # the rollback's host clock is 10 s behind the target's
    monkeypatch.setattr(rollback_module, "time", SimpleNamespace(time=lambda: lagging))
    report = await rollback(first.run_id, runs=migration_runs(settings), restore_to=redis_url)
    assert report.redis_restored == 3
    assert report.redis_expired == 1
    assert sorted(await source.keys()) == [b"g:0", b"g:1", b"g:2"]


def _damage(path: Path, how: str) -> None:
    """Damage a backup file the way a disk, a copy or a hand does."""
    raw = path.read_bytes()
    lines = gzip.decompress(raw).splitlines()
    last = json.loads(lines[-1])
    if how == "cut short":
        path.write_bytes(raw[:-10])
        return
    if how == "not JSON":
        lines.insert(1, b"{not json")
    elif how == "a type Redis restores none of":
        last["type"] = "stream"
    elif how == "no key":
        del last["key"]
    elif how == "an empty container":
        last.update(type="list", value=[])
    elif how == "no value":
        del last["value"]
    if how != "not JSON":
        lines[-1] = json.dumps(last).encode()
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))


@pytest.mark.parametrize(
    "how",
    ["cut short", "not JSON", "a type Redis restores none of", "no key", "an empty container"],
)
async def test_a_damaged_backup_is_refused_before_redis_is_touched(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, how: str
) -> None:
    """Before: a traceback (EOFError, which the CLI showed as a bare "Aborted.", a JSON or
    key error), or a Redis error after the keys before the damaged line were written."""
    settings = settings_for(tmp_path)
    for i in range(5):
        await source.set(f"g:{i}", f"v{i}")
    await source.rpush("l", "a", "b")
    first = await migrate(redis_url, settings, verify_after=False)
    await source.flushdb()
    _damage(migration_runs(settings) / first.run_id / "backup.jsonl.gz", how)
    with pytest.raises(RollbackError, match=r"backup\.jsonl\.gz is damaged"):
        await rollback(first.run_id, runs=migration_runs(settings), restore_to=redis_url)
    assert await source.dbsize() == 0


@pytest.mark.parametrize("how", ["cut short", "no value"])
async def test_a_damaged_kv_backup_is_refused_before_kv_is_touched(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, how: str
) -> None:
    """Before: a traceback, after restoring or deleting the entries of the chunks before the
    damaged line's (a ``KeyError`` at its turn)."""
    settings = settings_for(tmp_path)
    names = [f"g:{i:04}" for i in range(1_500)]
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put_many([PutItem(name, b"bot") for name in names])
    await source.mset({name: "redis" for name in names})
    forced = await migrate(redis_url, settings, overwrite=True, verify_after=False)
    _damage(migration_runs(settings) / forced.run_id / "kv-backup.jsonl.gz", how)
    with pytest.raises(RollbackError, match=r"kv-backup\.jsonl\.gz is damaged"):
        await roll_back(forced.run_id, settings, delete_kv=True)
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        found = await kv.get_many(names)
    assert {e.value for e in found.values() if e is not None} == {b"redis"}
    assert len(found) == len(names)


class DiesAfterRestoring(EmbeddedKV):
    """The embedded KV, where the rollback's process dies right after its first restore
    request landed (a SIGKILL before it could report)."""

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        await super().put_many(items)
        raise Killed


async def test_a_rollback_run_again_counts_what_it_gave_back_as_given_back(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Before: the second attempt called the entries the first one had given back (the
    bot's, an earlier run's) "changed on KV since the run" and "rewritten by a later run",
    as if the bot or a later run had written over them and KV still held the migration's."""
    settings = settings_for(tmp_path)
    await source.set("earlier", "v1")
    await migrate(redis_url, settings, verify_after=False)  # an earlier run's entry
    await source.set("earlier", "v2")
    for name in ("bot", "new"):
        await source.set(name, f"redis {name}")
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put("bot", b"bot value", metadata={"t": "string"})
    second = await migrate(redis_url, settings, overwrite=True, verify_after=False)
    runs = migration_runs(settings)
    async with DiesAfterRestoring(settings.embedded_kv_path) as kv:
        with pytest.raises(Killed):
            await rollback(second.run_id, runs=runs, namespace=kv, delete_kv=True)
    again = await roll_back(second.run_id, settings, delete_kv=True)
    assert again.kv_kept == {}
    assert again.kv_given_back_before == 2
    assert again.kv_absent == 1  # the killed attempt deleted it (before its restores)
    assert again.kept_names == []
    assert await values(settings, ["earlier", "bot", "new"]) == {
        "earlier": b"v1",
        "bot": b"bot value",
        "new": None,
    }
    third = await roll_back(second.run_id, settings, delete_kv=True)  # and once more
    assert (third.kv_given_back_before, third.kv_absent, third.kv_kept) == (2, 1, {})


async def test_each_rollback_keeps_its_own_report(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Reports were named to the second: a rollback run again within the same second
    wrote its report over the first one's."""
    settings = settings_for(tmp_path)
    await source.set("a", "1")
    run = await migrate(redis_url, settings)
    await roll_back(run.run_id, settings, delete_kv=True)
    await roll_back(run.run_id, settings, delete_kv=True)
    reports = list((settings.data_dir / "migrations" / run.run_id).glob("rollback-*.json"))
    assert len(reports) == 2


async def test_the_kv_values_an_overwrite_run_replaced_are_not_held_in_memory(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Rolling back an ``--overwrite`` run gives back the KV values it replaced. Before:
    every line of ``kv-backup.jsonl.gz`` was held in a dict for the whole rollback (a
    million replaced values of 1 KB: some 2 GB; here a peak of 47 MB). Now they wait in a
    SQLite file, read a chunk of 1,000 at a time: Python's peak (14 MB, most of it one
    chunk's restore) stays under the 24 MB of values given back."""
    settings = settings_for(tmp_path)
    n, value = 12_000, b"b" * 2048
    names = [f"g:{i:05d}" for i in range(n)]
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put_many([PutItem(name, value) for name in names])  # the bot's
    pipe = source.pipeline(transaction=False)
    for name in names:
        pipe.set(name, "from redis")
    await pipe.execute()
    forced = await migrate(redis_url, settings, overwrite=True, verify_after=False)
    assert forced.entries["overwritten (its KV value backed up)"] == n
    tracemalloc.start()
    try:
        undone = await roll_back(forced.run_id, settings, delete_kv=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert undone.kv_restored == n
    assert peak < 20 * 1024 * 1024, f"peak {peak // 1024} KiB"
    assert set((await values(settings, names[:3])).values()) == {value}
