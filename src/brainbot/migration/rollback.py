"""``brainbot rollback``: undo a migration run, from its own records.

* ``delete_kv``: delete from KV exactly the entries the run wrote (its manifest lists
  them), nothing else;
* ``restore_to``: write the run's backup back into a Redis (the source, or another one):
  each key is replaced by its backed-up value and type, with its TTL counted from the
  moment of the backup. Keys whose TTL has run out since are reported, not restored.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainbot.errors import RollbackError
from brainbot.kv.namespace import KVNamespace
from brainbot.migration.source import connect, translated


@dataclass
class RollbackReport:
    run_id: str
    kv_deleted: int = 0
    kv_unsuccessful: list[str] = field(default_factory=list)
    redis_restored: int = 0
    redis_expired: int = 0


def _run_dir(runs: Path, run_id: str) -> Path:
    path = runs / run_id
    if not (path / "state.json").exists():
        raise RollbackError(f"No migration run {run_id!r} under {runs}.")
    return path


def backup_records(path: Path) -> dict[bytes, dict[str, Any]]:
    """The last backed-up record of each key (a resumed batch may appear twice)."""
    records: dict[bytes, dict[str, Any]] = {}
    if not path.exists():
        return records
    with gzip.open(path, "rt") as lines:
        for line in lines:
            record = json.loads(line)
            records[base64.b64decode(record["key"])] = record
    return records


async def _restore(redis: Any, key: bytes, record: dict[str, Any]) -> bool:
    def raw(text: str) -> bytes:
        return base64.b64decode(text)

    expire_at = record["at_ms"] + record["pttl"] if record["pttl"] > 0 else None
    if expire_at is not None and expire_at <= time.time() * 1000:
        return False
    kind, value = record["type"], record["value"]
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    if kind == "string":
        pipe.set(key, raw(value))
    elif kind == "list":
        pipe.rpush(key, *[raw(v) for v in value])
    elif kind == "hash":
        pipe.hset(key, mapping={raw(k): raw(v) for k, v in value.items()})
    elif kind == "set":
        pipe.sadd(key, *[raw(v) for v in value])
    elif kind == "zset":
        pipe.zadd(key, {raw(m): s for m, s in value})
    if expire_at is not None:
        pipe.pexpireat(key, int(expire_at))
    await pipe.execute()
    return True


async def rollback(
    run_id: str,
    *,
    runs: Path,
    namespace: KVNamespace | None = None,
    delete_kv: bool = False,
    restore_to: str | None = None,
    tls_ca_file: str | None = None,
) -> RollbackReport:
    """Undo run ``run_id`` (its files under ``runs``): ``delete_kv`` deletes from
    ``namespace`` what the run wrote; ``restore_to`` writes its backup into that Redis."""
    if not delete_kv and restore_to is None:
        raise RollbackError("Nothing to do: choose delete_kv and/or restore_to.")
    if delete_kv and namespace is None:
        raise RollbackError("Deleting a run's KV entries needs the namespace it wrote to.")
    run_dir = _run_dir(runs, run_id)
    report = RollbackReport(run_id)
    if delete_kv:
        keys: list[str] = []
        manifest = run_dir / "manifest.jsonl"
        if manifest.exists():
            for line in manifest.read_text().splitlines():
                keys += json.loads(line)["kv_keys"]
        keys = list(dict.fromkeys(keys))
        assert namespace is not None
        result = await namespace.delete_many(keys)
        report.kv_deleted = result.successful_key_count
        report.kv_unsuccessful = list(result.unsuccessful_keys)
    if restore_to is not None:
        redis = connect(restore_to, tls_ca_file=tls_ca_file)
        try:
            with translated():
                for key, record in backup_records(run_dir / "backup.jsonl.gz").items():
                    if await _restore(redis, key, record):
                        report.redis_restored += 1
                    else:
                        report.redis_expired += 1
        finally:
            await redis.aclose()
    return report
