"""``migrate_redis_to_kv()``: Redis/Upstash into KV, at the speed of reading Redis, resumable
from anywhere, verified, documented, and never over live data.

**Pipeline.** A reader task reads SCAN steps ahead (one script call per step,
``source.Reader``); the planner turns their records into KV entries; full bulk writes of
10,000 entries go out as soon as they fill, several in flight (``in_flight``, within the
API budget), while the next steps are read and planned. Batches fill across SCAN steps, so
every bulk request but the last is full.

**Kill -9 anywhere.** ``state.json`` is written before anything else, so even a run killed
in its first second resumes. For each batch, in an order that survives a crash: the
backup of its keys (gzip, 0600, fsync), the bulk write, then, for the SCAN steps whose
entries are now all acknowledged (and every step before them), their manifest lines and
the checkpoint (the SCAN cursor after them). A resumed run reads again from the checkpoint;
what it finds already written by this migration is not written twice.

**Never over live data.** Every entry carries the migration's mark, the run's tag and a
digest of its value (``transform.marked``). Before writing, a run looks at what KV holds
(a listing into the run's ledger: 1,000 keys a request, none when KV is empty): it writes
a key KV does not hold; it skips a key that still holds exactly what this migration wrote
(value, metadata, expiry); it rewrites one this migration wrote whose source changed (its
value, TTL or encoding); it keeps a key that holds anything else (the bot wrote it since:
reported, or replaced with ``overwrite`` after its KV value is backed up); and it does not
re-create a key an earlier run of this migration wrote that KV no longer holds, unless
that run gave it an expiry now past (the bot deleted it; KV only let it expire). Runs
rolled back with ``--delete-kv`` count as never run. What a killed attempt of this same
run wrote is this run's: in its manifest, so its rollback undoes it. The listing is of the
moment the run starts: a key the bot first creates while the run is under way is not
protected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson

from brainbot import json_bytes
from brainbot.errors import MigrationError
from brainbot.kv.namespace import KVNamespace, PutItem
from brainbot.kv.overlay import ReadYourWrites
from brainbot.kv.rest import CloudflareKV
from brainbot.migration import files
from brainbot.migration.ledger import (
    FORGET,
    TTL_TOLERANCE_MS,
    Ledger,
    difference,
    expected_of,
    expiry_floor,
)
from brainbot.migration.source import (
    SUPPORTED,
    Encoded,
    Reader,
    Record,
    connect,
    read_ahead,
    redacted,
    scan_batches,
    translated,
)
from brainbot.migration.transform import (
    Options,
    Plan,
    digest,
    digest_of,
    owner_items,
    plan,
    stamp_of,
)

BACKUP_RETENTION_DAYS = 30
WRITE_ENTRIES = 10_000  # one full bulk request
WRITE_BYTES = 32 * 1024 * 1024  # or sooner, so memory stays bounded with big values
BACKUP_BYTES = 16 * 1024 * 1024  # backup lines held before they go to disk
IN_FLIGHT_WEIGHT = 160 * 1024 * 1024
"""About the memory batches in flight may hold (with the manifest lines of their steps,
which stay until acknowledged): a batch weighs its values plus ENTRY_WEIGHT per entry."""
ENTRY_WEIGHT = 1536
"""Measured: an entry and its share of the manifest hold about 0.7 KB (3.6 KB while
orjson's bytes kept a 4 KiB buffer each: ``json_bytes``), its part of the request body or
of the SQLite rows about 0.3 KB more."""
READ_AHEAD = 2  # pieces of SCAN steps read before the planner takes them
_VALUE = attrgetter("value")  # (a batch's volume: the values' lengths summed in C)


@dataclass
class Report:
    run_id: str
    source: str
    dry_run: bool
    keys_seen: int = 0
    migrated: Counter[str] = field(default_factory=Counter)
    """Keys migrated, by Redis type and kind (e.g. ``list/conversation``)."""
    kv_entries: int = 0
    """KV entries planned for the migrated keys."""
    entries: Counter[str] = field(default_factory=Counter)
    """What became of the planned entries: written, unchanged, kept (live on KV)..."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Keys not migrated, by reason (expired during the run is one of them)."""
    notes: Counter[str] = field(default_factory=Counter)
    api_requests: int = 0
    bulk_writes: int = 0
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

    def add(self, other: Report) -> None:
        """Count ``other``'s keys and entries in too (a step's tally into the run's)."""
        self.keys_seen += other.keys_seen
        self.kv_entries += other.kv_entries
        for name in ("migrated", "entries", "skipped", "notes"):
            getattr(self, name).update(getattr(other, name))

    def restore(self, saved: dict[str, Any]) -> None:
        for name in ("keys_seen", "kv_entries", "api_requests", "bulk_writes"):
            setattr(self, name, saved.get(name, 0))
        for name in ("migrated", "entries", "skipped", "notes"):
            getattr(self, name).update(saved.get(name, {}))


KEPT = "kept: changed on KV since the migration (--overwrite replaces it)"
UNCHANGED = "unchanged (already written by this migration)"
NOT_RECREATED = "not re-created: deleted on KV since an earlier run"


def _encode_value(record: Record) -> Any:
    b64 = files.b64
    value = record.value
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, dict):
        return {b64(k): b64(v) for k, v in value.items()}
    if record.type == "zset":  # JSON has no infinity: those scores are "inf" / "-inf"
        return [[b64(m), s if math.isfinite(s) else repr(s)] for m, s in value]
    return [b64(v) for v in value]


def backup_line(record: Record, now_ms: int) -> bytes:
    """The backup of a source record: its PTTL with the moment it was read (``now_ms`` if
    the record does not say), which rollback counts the expiry from."""
    if record.read_ms is not None:
        now_ms = record.read_ms
    if isinstance(record.value, Encoded):  # its backup form is ready: spliced in, not parsed
        head = orjson.dumps({"key": files.b64(record.key), "type": record.type})
        tail = orjson.dumps({"pttl": record.pttl, "at_ms": now_ms})
        return head[:-1] + b',"value":' + record.value.backup + b"," + tail[1:]
    return json_bytes.dumps(
        {
            "key": files.b64(record.key),
            "type": record.type,
            "value": _encode_value(record),
            "pttl": record.pttl,
            "at_ms": now_ms,
        }
    )


def manifest_line(run_id: str, p: Plan, items: list[PutItem]) -> bytes:
    """What the manifest says of a migrated key: the KV entries written for it (``items``,
    those of its plan that were kept) with their digests."""
    return json_bytes.dumps(
        {
            "run": run_id,
            "key": p.name,
            "type": p.record.type,
            "kind": p.kind,
            "size": p.size,
            "ttl_ms": p.record.pttl,
            "kv": _kv_of(items),
            "note": p.note,
        }
    )


def _kv_of(items: list[PutItem]) -> list[list[Any]]:
    """A manifest's record of KV entries a run wrote: name, digest, KV expiry."""
    return [[i.key, digest_of(i), i.expiration] for i in items]


def prune_backups(
    runs: Path, days: int = BACKUP_RETENTION_DAYS, *, held: str | None = None
) -> list[str]:
    """Delete the backups of finished runs older than ``days``; returns their run ids.
    A run of a migration another process holds (a rollback restoring from that backup)
    is left alone; ``held``: the mark of the migration the caller holds itself."""
    pruned = []
    cutoff = time.time() - days * 86400
    for state_file in runs.glob("*/state.json"):
        state = files.read_json(state_file)
        backup = state_file.parent / "backup.jsonl.gz"
        if state.get("done") and state.get("finished_at", time.time()) < cutoff and backup.exists():
            mark = str(state.get("mark", ""))
            lock = (
                contextlib.nullcontext()
                if mark == held
                else files.exclusive(runs, mark, MigrationError)
            )
            try:
                with lock:
                    backup.unlink()
            except MigrationError:
                continue  # in use, or no mark of ours: pruned by a later run, or by hand
            pruned.append(state["run_id"])
    return pruned


def fingerprint(source: str, match: str | None, type_: str | None, options: Options) -> str:
    """What makes runs the same migration: the source (redacted), the selection, options."""
    return orjson.dumps(
        [redacted(source), match, type_, asdict(options)], option=orjson.OPT_SORT_KEYS
    ).decode()


def mark_of(fingerprint_text: str) -> str:
    """The migration's mark in its entries' metadata (``g``): the same for all its runs."""
    return hashlib.sha256(fingerprint_text.encode()).hexdigest()[:8]


def _states(runs: Path, fingerprint_text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if not runs.exists():
        return found
    for state_file in runs.glob("*/state.json"):
        try:
            state = files.read_json(state_file)
        except (OSError, orjson.JSONDecodeError):
            continue
        if state.get("fingerprint") == fingerprint_text:
            found.append(state)
    return sorted(found, key=lambda s: s.get("started_at", 0))


ProgressHook = Callable[[int, int | None], None]
"""Called with (keys handled so far, estimated total) after each SCAN step."""


@dataclass
class _Step:
    """One SCAN step on its way to the checkpoint."""

    cursor: int
    tally: Report
    final: bool = False  # the last of the SCAN: past it, nothing is left to read
    pending: int = 0  # its entries not acknowledged yet
    closed: bool = False  # all its entries handed to batches
    manifest: list[bytes] = field(default_factory=list)


@dataclass
class _Batch:
    items: list[PutItem] = field(default_factory=list)
    steps: Counter[int] = field(default_factory=Counter)  # step index -> entries in here
    volume: int = 0


class _Run:
    """The moving parts of one run: batches in flight, steps, checkpoint, files."""

    def __init__(
        self,
        kv: KVNamespace,
        report: Report,
        state: dict[str, Any],
        run_path: Path | None,
        ledger: Ledger | None,
        *,
        mark: str,
        tag: str,
        overwrite: bool,
        batch_entries: int,
        in_flight: int,
        requests_before: int,
    ) -> None:
        self.kv = kv
        self.report = report
        self.state = state
        self.path = run_path
        self.ledger = ledger
        self.mark = mark
        self.tag = tag
        self.overwrite = overwrite
        self.batch_entries = batch_entries
        self.steps: list[_Step] = []
        self.done_steps = 0  # steps up to here are checkpointed
        self.batch = _Batch()
        self.backup: list[bytes] = []
        self.backup_bytes = 0
        self.claims: list[bytes] = []
        self.slots = asyncio.Semaphore(in_flight)
        self.flying = 0  # weight of the batches in flight
        self.landed = asyncio.Condition()
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        self.requests_before = requests_before
        self.earlier_requests = report.api_requests
        self.saved = Report(report.run_id, report.source, report.dry_run)
        """What the checkpointed steps counted (the live report counts steps in flight)."""
        self.saved.restore(state["report"] or {})
        self.checkpointing = asyncio.Lock()
        self.to_back_up: list[str] = []
        self.disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainbot-migration")
        """The run's file writes, one at a time in the order given: a batch's backup is on
        disk before its write is sent, a step's backup before its checkpoint."""
        self.flushed: asyncio.Future[None] | None = None
        self.disk_failure: BaseException | None = None

    # -- planning ---------------------------------------------------------------------

    def keep(self, items: list[PutItem], tally: Report) -> tuple[list[PutItem], list[PutItem]]:
        """The items to write, and those the manifest records as this run's (what it writes,
        and what a killed attempt of this same run wrote), after looking at what KV holds
        (see the module docstring)."""
        if self.ledger is None:
            tally.entries["written"] += len(items)
            return items, items
        names = [i.key for i in items]
        seen = self.ledger.lookup(names)
        now = time.time()
        earlier = self.ledger.written_before([n for n in names if n not in seen], now)
        floor = expiry_floor(TTL_TOLERANCE_MS, now)
        write: list[PutItem] = []
        record: list[PutItem] = []
        for item in items:
            there = seen.get(item.key)
            if there is None:
                if item.key in earlier:
                    tally.entries[NOT_RECREATED] += 1
                    continue
            elif there.mark == self.mark:  # nobody wrote it since this migration did
                if difference(expected_of(item, ""), there, TTL_TOLERANCE_MS, floor) is None:
                    if there.run == self.tag:  # a killed attempt of this run wrote it
                        tally.entries["written"] += 1
                        record.append(item)
                    else:
                        tally.entries[UNCHANGED] += 1
                    continue
                if there.run != self.tag:  # an earlier run's entry: rolling this run back
                    self.to_back_up.append(item.key)  # gives it back, so back it up
            elif not self.overwrite:
                tally.entries[KEPT] += 1
                continue
            else:
                tally.entries["overwritten (its KV value backed up)"] += 1
                self.to_back_up.append(item.key)
                write.append(item)
                record.append(item)
                continue
            tally.entries["written"] += 1
            write.append(item)
            record.append(item)
        return write, record

    async def add_step(
        self, cursor: int, plans: list[Plan], read_ms: int, *, final: bool = False
    ) -> None:
        index = len(self.steps)
        tally = Report(self.report.run_id, self.report.source, self.report.dry_run)
        _tally(tally, plans)
        step = _Step(cursor, tally, final)
        self.steps.append(step)
        self.to_back_up = []
        kept: list[tuple[list[PutItem], list[PutItem]] | None]
        if self.ledger is None:  # (``keep`` without a ledger, in one go: a key's items)
            kept = [None if p.skipped else (p.items, p.items) for p in plans]
            if any(chosen is not None for chosen in kept):
                tally.entries["written"] += sum(len(p.items) for p in plans if not p.skipped)
        else:
            kept = [None if p.skipped else self.keep(p.items, tally) for p in plans]
        if self.to_back_up and self.path is not None:  # before any can go out in a batch
            await self.back_up_kv(self.to_back_up)  # (a dry run writes nothing)
        run_id = self.state["run_id"]
        writing = self.path is not None  # a dry run writes nothing
        writes: list[list[PutItem]] = []  # each key's items to write, in order
        for p, chosen in zip(plans, kept, strict=True):
            record = p.record
            if writing and record.value is not None and record.type in SUPPORTED:
                line = backup_line(record, read_ms)  # skipped ones too
                self.backup.append(line)
                self.backup_bytes += len(line)
                if self.backup_bytes > BACKUP_BYTES:
                    if self.flushed is not None:
                        await self.flushed  # at most one backup chunk waiting for the disk
                    self.flushed = self.flush_files()
            if chosen is None:  # skipped
                continue
            items, recorded = chosen
            if p.claims:
                self.claims += [json_bytes.dumps([owner, cid]) for owner, cid in p.claims]
            step.manifest.append(manifest_line(run_id, p, recorded))
            if writing and items:
                writes.append(items)
        await self.add_items(index, step, writes)
        self.report.add(tally)
        step.closed = True
        if len(self.batch.items) >= self.batch_entries:
            await self.dispatch()
        self.spawn(self.advance())

    async def add_items(self, index: int, step: _Step, writes: list[list[PutItem]]) -> None:
        """Put step ``index``'s items (``writes``: a list per key) in batches, each sent as
        soon as the next item would overflow it. The whole step in at once when it fits
        (most do: the batch is then the same as key by key, without a loop in Python)."""
        if not writes or self._add_whole(index, step, list(itertools.chain.from_iterable(writes))):
            return
        for items in writes:
            if self._add_whole(index, step, items):  # the whole key fits in the batch
                continue
            for item in items:
                size = len(item.value) + 256
                if self.batch.items and (
                    len(self.batch.items) >= self.batch_entries
                    or self.batch.volume + size > WRITE_BYTES
                ):
                    await self.dispatch()
                self.batch.items.append(item)
                self.batch.steps[index] += 1
                self.batch.volume += size
                step.pending += 1

    def _add_whole(self, index: int, step: _Step, items: list[PutItem]) -> bool:
        """Put all of ``items`` (step ``index``'s) in the current batch if they fit in it
        together; whether they did."""
        batch, count = self.batch, len(items)
        volume = sum(map(len, map(_VALUE, items))) + 256 * count
        if len(batch.items) + count > self.batch_entries or batch.volume + volume > WRITE_BYTES:
            return False
        batch.items += items
        batch.steps[index] += count
        batch.volume += volume
        step.pending += count
        return True

    # -- writing ----------------------------------------------------------------------

    async def back_up_kv(self, keys: list[str]) -> None:
        """Keep the KV values this run is about to replace (the bot's under ``overwrite``,
        an earlier run's it rewrites), for rollback. An entry this run wrote already (a
        key SCAN gave twice, a killed attempt's write the listing did not show yet) is
        not backed up: it is no earlier value, and rollback would put it back."""
        assert self.path is not None
        found = dict(await self.kv.get_many(keys))
        for key, entry in list(found.items()):
            stamp = stamp_of(entry.metadata) if entry is not None else None
            if stamp is not None and (stamp.mark, stamp.run) == (self.mark, self.tag):
                del found[key]
        lines = [
            orjson.dumps(
                {
                    "key": key,
                    "value": files.b64(entry.value),
                    "expiration": entry.expiration,
                    "metadata": entry.metadata,
                }
            )
            for key, entry in found.items()
            if entry is not None
        ]
        files.append(self.path / "kv-backup.jsonl.gz", lines, compressed=True)

    async def dispatch(self) -> None:
        """Send the current batch (after its keys' backup is on disk)."""
        batch, self.batch = self.batch, _Batch()
        self.raise_failure()
        flushed = self.flush_files()  # the backup of its keys, before the write is sent
        if not batch.items:
            await flushed
            return
        await self.slots.acquire()
        weight = batch.volume + ENTRY_WEIGHT * len(batch.items)
        async with self.landed:  # memory bounds the writes in flight as much as their count
            await self.landed.wait_for(
                lambda: self.flying == 0 or self.flying + weight <= IN_FLIGHT_WEIGHT
            )
            self.flying += weight
        self.spawn(self._write(batch, weight, flushed))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` alongside the planner; its failure stops the run (``finish``)."""

        async def guarded() -> None:
            try:
                await work
            except BaseException as exc:
                self.failure = self.failure or exc

        task = asyncio.get_running_loop().create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def flush_files(self) -> asyncio.Future[None]:
        """Hand the backup and the owner claims read so far to the disk thread; the future
        is done once they are on disk (and so is everything handed before them)."""
        loop = asyncio.get_running_loop()
        if self.path is None:  # a dry run keeps its claims in memory, and no backup
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        backup, self.backup = self.backup, []
        claims, self.claims = self.claims, []
        self.backup_bytes = 0
        backup_file, owners_file = self.path / "backup.jsonl.gz", self.path / "owners.jsonl"

        def write() -> None:
            files.append(backup_file, backup, compressed=True)
            files.append(owners_file, claims)

        return self.on_disk(write)

    def on_disk(self, job: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``job`` on the disk thread, after everything handed before it. Once a job
        has failed every later one fails with its error: nothing is written, sent or
        checkpointed past a backup that is not on disk."""

        def run() -> None:
            if self.disk_failure is not None:
                raise self.disk_failure
            try:
                job()
            except BaseException as exc:
                self.disk_failure = exc
                raise

        return asyncio.get_running_loop().run_in_executor(self.disk, run)

    async def _write(self, batch: _Batch, weight: int, flushed: asyncio.Future[None]) -> None:
        try:
            await flushed
            result = await self.kv.put_many(batch.items)
            self.report.bulk_writes += 1
            if result.unsuccessful_keys:
                raise MigrationError(
                    f"KV did not accept {len(result.unsuccessful_keys)} key(s) after retries; "
                    "run again with --resume to continue from the last checkpoint."
                )
            for index, n in batch.steps.items():
                self.steps[index].pending -= n
            await self.advance()
        except BaseException as exc:
            self.failure = self.failure or exc
        finally:
            self.slots.release()
            async with self.landed:
                self.flying -= weight
                self.landed.notify_all()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def advance(self) -> None:
        """Move the checkpoint past the steps whose entries are all acknowledged (one
        writer of the run's files at a time: writes complete concurrently)."""
        async with self.checkpointing:
            await self._advance()

    async def _advance(self) -> None:
        first = self.done_steps
        while self.done_steps < len(self.steps):
            step = self.steps[self.done_steps]
            if not step.closed or step.pending:
                break
            self.done_steps += 1
        if self.done_steps == first or self.path is None:
            return
        flushed = self.flush_files()  # the steps' backups before their checkpoint
        manifest = [line for step in self.steps[first : self.done_steps] for line in step.manifest]
        for step in self.steps[first : self.done_steps]:
            step.manifest = []
            self.saved.add(step.tally)
        self.state["cursor"] = self.steps[self.done_steps - 1].cursor
        if self.steps[self.done_steps - 1].final:  # cursor 0 again: the end, not the start
            self.state["scanned"] = True
        self.report.api_requests = self.earlier_requests + _requests(self.kv) - self.requests_before
        self.saved.api_requests = self.report.api_requests
        self.saved.bulk_writes = self.report.bulk_writes
        self.state["report"] = self.saved.to_json()
        path, state = self.path, dict(self.state)

        def write() -> None:
            files.append(path / "manifest.jsonl", manifest)
            files.write_json(path / "state.json", state)

        await flushed
        await self.on_disk(write)

    async def finish(self) -> None:
        if self.flushed is not None:
            await self.flushed
        await self.dispatch()
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.raise_failure()
        await self.advance()

    def close(self) -> None:
        self.disk.shutdown(wait=True)


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
    in_flight: int = 8,
    overwrite: bool = False,
    tls_ca_file: str | None = None,
    source_password: str | None = None,
    progress: ProgressHook | None = None,
    verify_after: bool = True,
    verify_lanes: int | None = None,
) -> Report:
    """Migrate every key of ``source`` (matching ``match``/``type_``) into ``namespace``
    (the caller opens and closes it), keeping the run's files under ``runs``."""
    options = options or Options()
    started = time.monotonic()
    print_text = fingerprint(source, match, type_, options)
    mark = mark_of(print_text)
    earlier_states = _states(runs, print_text)
    state: dict[str, Any] | None = None
    if resume and not dry_run:
        unfinished = [
            s for s in earlier_states if not s.get("done") and not s.get("rolled_back_at")
        ]
        if not unfinished:
            raise MigrationError(
                "Nothing to resume: no unfinished run of this migration. Run the same "
                "command without --resume to start a fresh run."
            )
        state = unfinished[-1]
    if state is None:
        run_id = files.new_run_id()
        state = {
            "run_id": run_id,
            "fingerprint": print_text,
            "mark": mark,
            "cursor": 0,
            "done": False,
            "started_at": time.time(),
            "report": None,
        }
    resumed = resume and not dry_run  # (a resume that found nothing has raised)
    with contextlib.ExitStack() as held:  # the migration's lock, until the command ends
        run_path = None if dry_run else _open_run(runs, state, held, resumed=resumed)
        redis = connect(source, tls_ca_file=tls_ca_file, password=source_password)
        report = Report(state["run_id"], redacted(source), dry_run, resumed=resumed)
        if state["report"]:
            report.restore(state["report"])
        scratch = contextlib.ExitStack()  # scratch files, until the run's part ends
        kv = namespace
        ledger: Ledger | None = None
        run: _Run | None = None
        requests_at_start = _requests(kv)  # the listing of what KV holds counts too
        try:
            # the runs before this one, read under the lock (one may have ended meanwhile)
            earlier = _earlier_keys(runs, _states(runs, print_text), state["run_id"])
            first = next(earlier, None)
            if first is not None or (await kv.list(prefix=options.prefix, limit=10)).keys:
                where = run_path or Path(scratch.enter_context(tempfile.TemporaryDirectory()))
                ledger = Ledger(where / "kv-state.sqlite3")
                ledger.remember(itertools.chain([first] if first else [], earlier))
                await ledger.load(kv, options.prefix)
            run = _Run(
                kv,
                report,
                state,
                run_path,
                ledger,
                mark=mark,
                tag=files.run_tag(state["run_id"]),
                overwrite=overwrite,
                batch_entries=batch_entries,
                in_flight=in_flight,
                requests_before=requests_at_start,
            )
            with translated():
                total = None if match or type_ else int(await redis.dbsize())
            await _pipeline(
                redis,
                run,
                options,
                mark,
                files.run_tag(state["run_id"]),
                state,
                match,
                type_,
                scan_count,
                progress,
                total,
            )
            await run.finish()
            claims = (
                _claims(run.claims) if dry_run else _claims(files.lines(run_path / "owners.jsonl"))  # type: ignore[operator]
            )
            owners, conflicts = owner_items(
                claims,
                options.prefix,
                int(time.time() * 1000),
                mark,
                files.run_tag(state["run_id"]),
            )
            report.kv_entries += len(owners)
            if conflicts:
                report.notes["conversation several users claim: operators only"] += len(conflicts)
            run.to_back_up = []
            kept, recorded = run.keep(owners, report)
            if recorded and not dry_run:
                assert run_path is not None
                if run.to_back_up:  # what --overwrite replaces, on disk before it is replaced
                    await run.back_up_kv(run.to_back_up)
                if kept:
                    result = await kv.put_many(kept)
                    report.bulk_writes += math.ceil(len(kept) / WRITE_ENTRIES)
                    if result.unsuccessful_keys:
                        raise MigrationError(
                            "KV did not accept the owners' entries; run with --resume."
                        )
                files.append(
                    run_path / "manifest.jsonl",
                    [
                        orjson.dumps(
                            {
                                "run": state["run_id"],
                                "key": "(owners)",
                                "kind": "owners",
                                "kv": _kv_of(recorded),
                            }
                        )
                    ],
                )
            report.api_requests = run.earlier_requests + _requests(kv) - run.requests_before
            report.seconds = time.monotonic() - started
            if run_path is not None:
                state["done"], state["finished_at"] = True, time.time()
                state["report"] = report.to_json()
                files.write_json(run_path / "state.json", state)
                files.write_json(run_path / "report.json", report.to_json())
        finally:
            if run is not None:
                run.close()
            await redis.aclose()
            if ledger is not None:
                ledger.discard()
            scratch.close()
        if verify_after and not dry_run:
            from brainbot.migration.verify import verify

            differences = await verify(
                source,
                namespace=namespace,
                options=options,
                match=match,
                type_=type_,
                tls_ca_file=tls_ca_file,
                source_password=source_password,
                work_dir=run_path,
                lanes=verify_lanes,
            )
            report.verify_differences = len(differences.differences)
            report.api_requests += differences.api_requests  # one count for the whole command
            assert run_path is not None
            files.write_json(run_path / "verify.json", differences.to_json())
            files.write_json(run_path / "report.json", report.to_json())
        return report


async def _pipeline(
    redis: Any,
    run: _Run,
    options: Options,
    mark: str,
    tag: str,
    state: dict[str, Any],
    match: str | None,
    type_: str | None,
    scan_count: int,
    progress: ProgressHook | None,
    total: int | None,
) -> None:
    """Read ahead in a task; plan and write here, as the steps come."""
    reader = Reader(redis, whole=options.whole)

    async def read(
        hand_on: Callable[[tuple[int, list[Record], int, bool]], Awaitable[None]],
    ) -> None:
        if state.get("scanned"):  # killed after its last step's checkpoint: all read
            return
        before = int(state["cursor"])
        async for cursor, keys in scan_batches(
            redis, cursor=before, match=match, type_=type_, count=scan_count
        ):
            pieces = reader.pieces(keys)
            piece = await anext(pieces, None)
            while piece is not None:
                following = await anext(pieces, None)
                # a step of big values comes in pieces: only its last one moves the
                # checkpoint past it (a resumed run reads the whole step again)
                at = cursor if following is None else before
                final = following is None and cursor == 0
                await hand_on((at, piece, int(time.time() * 1000), final))
                piece = following
            before = cursor

    async for cursor, records, read_ms, final in read_ahead(read, READ_AHEAD):
        plans = [plan(r, options, read_ms, mark, tag) for r in records]
        await run.add_step(cursor, plans, read_ms, final=final)
        if progress is not None:
            progress(run.report.keys_seen, total)


def _open_run(
    runs: Path, state: dict[str, Any], held: contextlib.ExitStack, *, resumed: bool
) -> Path:
    """The run's directory, locked for this process (``held``), with its state file
    written first: resumable from here on. A resumed run's state is read again under the
    lock: the run may have ended, or been rolled back, since it was chosen."""
    held.enter_context(files.exclusive(runs, str(state["mark"]), MigrationError))
    run_path = Path(runs, str(state["run_id"]))
    run_path.mkdir(exist_ok=True, mode=0o700)
    if resumed:
        now = files.read_json(run_path / "state.json")
        if now.get("done") or now.get("rolled_back_at"):
            held.close()
            raise MigrationError(
                f"Nothing to resume: run {state['run_id']} ended or was rolled back meanwhile. "
                "Run the same command without --resume to start a fresh run."
            )
        state.clear()
        state.update(now)
    files.write_json(run_path / "state.json", state)
    prune_backups(runs, held=str(state["mark"]))
    return run_path


def _earlier_keys(
    runs: Path, states: list[dict[str, Any]], run_id: str
) -> Iterator[tuple[str, int | None]]:
    """KV keys earlier runs of this migration wrote (from their manifests), with the KV
    expiry each gave (None: none, or a manifest of an older version that did not say),
    and the keys each rollback deleted, with ``FORGET``: they no longer count as written
    before. In the order it all happened (runs and rollbacks of one migration take turns,
    under its lock): a run's writes at its start, a rollback's deletes at its own."""
    events: list[tuple[float, Path, bool]] = []  # (when, file, a rollback's)
    for state in states:
        if state.get("run_id") == run_id:
            continue
        run = runs / state["run_id"]
        events.append((float(state.get("started_at", 0)), run / "manifest.jsonl", False))
        for undone in run.glob("undone-*.jsonl"):
            at = undone.stem.removeprefix("undone-")
            if at.isdigit():
                events.append((int(at) / 1000, undone, True))
    for _, path, forget in sorted(events):
        if forget:
            yield from ((name, FORGET) for name in files.lines(path))
            continue
        for line in files.lines(path):
            for entry in line.get("kv", ()):
                yield entry[0], (entry[2] if len(entry) > 2 else None)
            yield from ((k, None) for k in line.get("kv_keys", ()))  # older versions


def _claims(lines: Iterable[Any]) -> dict[str, set[str]]:
    claims: dict[str, set[str]] = {}
    for line in lines:
        owner, cid = orjson.loads(line) if isinstance(line, bytes) else line
        claims.setdefault(cid, set()).add(owner)
    return claims


def _requests(kv: KVNamespace) -> int:
    """API requests the namespace has sent so far (0 for the embedded KV)."""
    while isinstance(kv, ReadYourWrites):
        kv = kv.inner
    return kv.budget.requests if isinstance(kv, CloudflareKV) else 0


def _tally(report: Report, plans: list[Plan]) -> None:
    """Count a step's plans in: each counter updated once a step (``Counter.update``
    counts in C), in the order the plans first name each reason, kind or note."""
    report.keys_seen += len(plans)
    report.skipped.update([p.skipped for p in plans if p.skipped])
    migrated = [p for p in plans if not p.skipped]
    for (type_, kind), n in Counter([(p.record.type, p.kind) for p in migrated]).items():
        report.migrated[f"{type_}/{kind}"] += n
    report.kv_entries += sum([len(p.items) for p in migrated])
    report.notes.update([p.note for p in migrated if p.note])


def remove_run(runs: Path, run_id: str) -> None:
    import shutil

    shutil.rmtree(files.run_dir(runs, run_id), ignore_errors=True)


__all__ = [
    "Report",
    "backup_line",
    "digest",
    "manifest_line",
    "migrate_redis_to_kv",
    "prune_backups",
]
