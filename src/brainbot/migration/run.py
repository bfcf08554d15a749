"""``migrate_redis_to_kv()``: Redis/Upstash into KV, resumable, verified, documented.

Keys are read SCAN step by SCAN step and written in batches of up to 10,000 KV entries (one
full bulk request; less when values are big) that end on a SCAN step, so that the checkpoint,
a SCAN cursor, never moves past a key KV has not acknowledged. For each batch, in an order
that survives kill -9:

1. read the keys (type, TTL, value) and plan their KV writes (pre-flight checks included);
2. append the source records to the run's **backup** (gzip, mode 0600) and fsync it;
3. write the planned entries to KV in bulk (packed by count and bytes, paced to the API
   budget, unsuccessful keys retried by the namespace layer);
4. append the batch to the **manifest** (key, type, size, TTL, checksum; never values);
5. replace the **checkpoint** (the SCAN cursor and the counts) atomically.

A run killed anywhere resumes from its last checkpoint (``resume=True``); the batch in
flight is read and written again, which is harmless: the same keys get the same values, and
legacy messages get the same ids. Files live in ``<runs>/<run id>/`` (the CLI passes
``$BRAINBOT_DATA_DIR/migrations``).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brainbot.errors import MigrationError
from brainbot.kv.namespace import KVNamespace, PutItem
from brainbot.kv.overlay import ReadYourWrites
from brainbot.kv.rest import CloudflareKV
from brainbot.migration.source import (
    SUPPORTED,
    Record,
    connect,
    read,
    redacted,
    scan_batches,
    translated,
)
from brainbot.migration.transform import Options, Plan, checksum, owner_items, plan, size_of

BACKUP_RETENTION_DAYS = 30
WRITE_ENTRIES = 10_000  # one full bulk request
WRITE_BYTES = 64 * 1024 * 1024  # or sooner, so memory stays bounded with big values


@dataclass
class Report:
    run_id: str
    source: str
    dry_run: bool
    keys_seen: int = 0
    migrated: Counter[str] = field(default_factory=Counter)
    """Keys migrated, by Redis type and kind (e.g. ``list/conversation``)."""
    kv_entries: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Keys not migrated, by reason (expired during the run is one of them)."""
    notes: Counter[str] = field(default_factory=Counter)
    api_requests: int = 0
    seconds: float = 0.0
    resumed: bool = False
    verify_differences: int | None = None

    @property
    def expired_during_run(self) -> int:
        return self.skipped.get("expired during the run", 0)

    def to_json(self) -> dict[str, Any]:
        out = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}
        out["expired_during_run"] = self.expired_during_run
        return out


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _append(path: Path, lines: list[str], *, compressed: bool = False) -> None:
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        out.write(gzip.compress(data) if compressed else data)  # gzip members concatenate
        out.flush()
        os.fsync(out.fileno())


def _encode_value(record: Record) -> Any:
    def b(x: bytes) -> str:
        return base64.b64encode(x).decode()

    value = record.value
    if isinstance(value, bytes):
        return b(value)
    if isinstance(value, dict):
        return {b(k): b(v) for k, v in value.items()}
    if record.type == "zset":
        return [[b(m), s] for m, s in value]
    return [b(v) for v in value]


def backup_line(record: Record, now_ms: int) -> str:
    return json.dumps(
        {
            "key": base64.b64encode(record.key).decode(),
            "type": record.type,
            "value": _encode_value(record),
            "pttl": record.pttl,
            "at_ms": now_ms,
        }
    )


def prune_backups(runs: Path, days: int = BACKUP_RETENTION_DAYS) -> list[str]:
    """Delete the backups of finished runs older than ``days``; returns their run ids."""
    pruned = []
    cutoff = time.time() - days * 86400
    for state_file in runs.glob("*/state.json"):
        state = json.loads(state_file.read_text())
        backup = state_file.parent / "backup.jsonl.gz"
        if state.get("done") and state.get("finished_at", time.time()) < cutoff and backup.exists():
            backup.unlink()
            pruned.append(state["run_id"])
    return pruned


def _fingerprint(source: str, match: str | None, type_: str | None, options: Options) -> str:
    return json.dumps([redacted(source), match, type_, asdict(options)], sort_keys=True)


def _find_resumable(runs: Path, fingerprint: str) -> dict[str, Any] | None:
    candidates = []
    for state_file in runs.glob("*/state.json"):
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") == fingerprint and not state.get("done"):
            candidates.append(state)
    return max(candidates, key=lambda s: s["started_at"]) if candidates else None


ProgressHook = Callable[[int, int | None], None]
"""Called with (keys handled so far, estimated total) after each batch."""


async def migrate_redis_to_kv(
    source: str,
    *,
    namespace: KVNamespace,
    runs: Path,
    options: Options | None = None,
    match: str | None = None,
    type_: str | None = None,
    dry_run: bool = False,
    resume: bool = False,
    scan_count: int = 1000,
    batch_entries: int = WRITE_ENTRIES,
    tls_ca_file: str | None = None,
    progress: ProgressHook | None = None,
    verify_after: bool = True,
) -> Report:
    """Migrate every key of ``source`` (matching ``match``/``type_``) into ``namespace``
    (the caller opens and closes it), keeping the run's files under ``runs``."""
    options = options or Options()
    started = time.monotonic()
    fingerprint = _fingerprint(source, match, type_, options)
    state = _find_resumable(runs, fingerprint) if resume and not dry_run else None
    if resume and not dry_run and state is None:
        raise MigrationError("Nothing to resume: no unfinished run with these options.")
    if state is None:
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        state = {
            "run_id": run_id,
            "fingerprint": fingerprint,
            "cursor": 0,
            "done": False,
            "started_at": time.time(),
            "report": None,
        }
    report = Report(state["run_id"], redacted(source), dry_run, resumed=state["report"] is not None)
    if state["report"]:
        saved = state["report"]
        report.keys_seen = saved["keys_seen"]
        report.kv_entries = saved["kv_entries"]
        report.migrated.update(saved["migrated"])
        report.skipped.update(saved["skipped"])
        report.notes.update(saved["notes"])
        report.api_requests = saved["api_requests"]
    run_dir = runs / state["run_id"]
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        prune_backups(runs)

    redis = connect(source, tls_ca_file=tls_ca_file)
    kv = namespace
    budget_before, earlier_requests = _requests(kv), report.api_requests

    async def checkpoint(batch: _Pending) -> None:
        await _write_batch(kv, run_dir, state["run_id"], batch.plans)
        state["cursor"] = batch.cursor
        report.api_requests = earlier_requests + _requests(kv) - budget_before
        state["report"] = report.to_json()
        _fsync_write(run_dir / "state.json", json.dumps(state).encode())
        batch.clear()

    try:
        with translated():
            total = None if match or type_ else int(await redis.dbsize())
        pending = _Pending()  # planned, not yet written
        dry_plans: list[Plan] = []  # a dry run's owner claims, counted at the end
        async for cursor, keys in scan_batches(
            redis, cursor=int(state["cursor"]), match=match, type_=type_, count=scan_count
        ):
            now_ms = int(time.time() * 1000)
            plans = [plan(r, options, now_ms) for r in await read(redis, keys)]
            entries = sum(len(p.items) for p in plans)
            volume = sum(size_of(p.record) for p in plans if not p.skipped)
            # Bulk requests hold 10,000 entries and end on a SCAN step, so the checkpoint
            # (a cursor) moves only past what KV has acknowledged: close the batch before a
            # step would overflow it, write it once full, big, or at the end.
            if not dry_run and pending.plans and pending.overflows(entries, volume, batch_entries):
                await checkpoint(pending)
            _tally(report, plans)
            if dry_run:
                dry_plans += [p for p in plans if p.claims]
            if not dry_run:
                pending.add(plans, now_ms, entries, volume, cursor)
                if pending.full(batch_entries) or cursor == 0:
                    await checkpoint(pending)
            if progress is not None:
                progress(report.keys_seen, total)
        claims = _claims(dry_plans) if dry_run else _claims_of(run_dir / "owners.jsonl")
        owners, conflicts = owner_items(claims, options.prefix, int(time.time() * 1000))
        report.kv_entries += len(owners)
        if conflicts:
            report.notes["conversation several users claim: operators only"] += len(conflicts)
        if owners and not dry_run:
            await _write_owners(kv, run_dir, state["run_id"], owners)
        report.api_requests = earlier_requests + _requests(kv) - budget_before
        report.seconds = time.monotonic() - started
        if not dry_run:
            state["done"], state["finished_at"] = True, time.time()
            state["report"] = report.to_json()
            _fsync_write(run_dir / "state.json", json.dumps(state).encode())
            (run_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    finally:
        await redis.aclose()
    if verify_after and not dry_run:
        from brainbot.migration.verify import verify

        differences = await verify(
            source,
            namespace=namespace,
            options=options,
            match=match,
            type_=type_,
            tls_ca_file=tls_ca_file,
        )
        report.verify_differences = len(differences.differences)
        (run_dir / "verify.json").write_text(json.dumps(differences.to_json(), indent=2))
    return report


@dataclass
class _Pending:
    """Planned records not yet written, and the SCAN cursor just past them."""

    plans: list[tuple[Plan, int]] = field(default_factory=list)  # (plan, read time)
    entries: int = 0
    volume: int = 0
    cursor: int = 0

    def add(self, plans: list[Plan], read_ms: int, entries: int, volume: int, cursor: int) -> None:
        self.plans += [(p, read_ms) for p in plans]
        self.entries += entries
        self.volume += volume
        self.cursor = cursor

    def overflows(self, entries: int, volume: int, batch_entries: int) -> bool:
        return self.entries + entries > batch_entries or self.volume + volume > WRITE_BYTES

    def full(self, batch_entries: int) -> bool:
        return self.entries >= batch_entries or self.volume >= WRITE_BYTES

    def clear(self) -> None:
        self.plans, self.entries, self.volume = [], 0, 0


def _requests(kv: KVNamespace) -> int:
    """API requests the namespace has sent so far (0 for the embedded KV)."""
    while isinstance(kv, ReadYourWrites):
        kv = kv.inner
    return kv.budget.requests if isinstance(kv, CloudflareKV) else 0


def _claims(plans: Iterable[Plan]) -> dict[str, set[str]]:
    claims: dict[str, set[str]] = {}
    for p in plans:
        for owner, cid in p.claims:
            claims.setdefault(cid, set()).add(owner)
    return claims


def _claims_of(path: Path) -> dict[str, set[str]]:
    """The owner claims a run has read so far (kept on disk: a resumed run has them all)."""
    claims: dict[str, set[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            owner, cid = json.loads(line)
            claims.setdefault(cid, set()).add(owner)
    return claims


async def _write_owners(kv: KVNamespace, run_dir: Path, run_id: str, items: list[PutItem]) -> None:
    result = await kv.put_many(items)
    if result.unsuccessful_keys:
        raise MigrationError(
            f"KV did not accept {len(result.unsuccessful_keys)} owner entries after retries; "
            "run again with --resume to finish."
        )
    _append(
        run_dir / "manifest.jsonl",
        [
            json.dumps(
                {
                    "run": run_id,
                    "key": "(owners)",
                    "kind": "owners",
                    "kv_keys": [i.key for i in items],
                }
            )
        ],
    )


def _tally(report: Report, plans: list[Plan]) -> None:
    for p in plans:
        report.keys_seen += 1
        if p.skipped:
            report.skipped[p.skipped] += 1
            continue
        report.migrated[f"{p.record.type}/{p.kind}"] += 1
        report.kv_entries += len(p.items)
        if p.note:
            report.notes[p.note] += 1


async def _write_batch(
    kv: KVNamespace, run_dir: Path, run_id: str, read: list[tuple[Plan, int]]
) -> None:
    plans = [p for p, _ in read]
    lines = [backup_line(p.record, at) for p, at in read if p.record.type in SUPPORTED]
    _append(run_dir / "backup.jsonl.gz", lines, compressed=True)
    _append(
        run_dir / "owners.jsonl",
        [json.dumps([owner, cid]) for p in plans for owner, cid in p.claims],
    )
    items = [item for p in plans for item in p.items]
    result = await kv.put_many(items)
    if result.unsuccessful_keys:
        raise MigrationError(
            f"KV did not accept {len(result.unsuccessful_keys)} key(s) after retries; "
            "run again with --resume to continue from the last checkpoint."
        )
    _append(
        run_dir / "manifest.jsonl",
        [
            json.dumps(
                {
                    "run": run_id,
                    "key": p.name,
                    "type": p.record.type,
                    "kind": p.kind,
                    "size": size_of(p.record),
                    "ttl_ms": p.record.pttl,
                    "sha256": checksum(p.record),
                    "kv_keys": [i.key for i in p.items],
                    "note": p.note,
                },
                ensure_ascii=False,
            )
            for p in plans
            if not p.skipped
        ],
    )


def remove_run(runs: Path, run_id: str) -> None:
    shutil.rmtree(runs / run_id, ignore_errors=True)
