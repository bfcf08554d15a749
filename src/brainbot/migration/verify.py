"""``brainbot verify``: every key of the source compared with KV, in list pages.

KV is listed once under the prefix into a ledger (1,000 entries a request: names, expiry
and metadata, never values) while the source is read and planned exactly as the migration
plans it; each planned entry goes into the same ledger (a SQLite file: a million keys cost
no memory). Then SQLite compares the two in one join: each entry must be there, with the
digest of the expected value (the migration stamps it into the entry's metadata), its
type, and an expiry within a tolerance of the source's TTL; a legacy conversation must
hold exactly its messages (none missing, none extra). Only what does not match comes back
to Python, which says how it differs. Values are read only where metadata cannot answer:

* keys missing from the listing, looked at again after a pause (KV is eventually
  consistent) before they are called lost;
* entries without a digest (written by an older version, or by the bot since);
* hashes whose digest differs: an older version wrote Redis's field order, which changes
  (``transform.ordered_hash``); their fields are compared in byte order;
* a random sample of the matching entries (``sample``, default 100), whose values are
  read and digested again: the check that the metadata tells the truth.

So verification costs about one request per 1,000 KV entries, plus one per 100 values
read. It can run at any time, on its own, and shares the API budget of the namespace it
is given. Keys the migration skips (and why) are counted, not reported as differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from brainbot import errors
from brainbot.errors import BrainbotError, MigrationError
from brainbot.kv.embedded import prefix_upper_bound
from brainbot.kv.namespace import Entry, KVNamespace, PutItem
from brainbot.migration.ledger import (
    TTL_TOLERANCE_MS,
    VALUE_DIFFERS,
    Expected,
    Ledger,
    difference,
    expected_of,
    expiry_floor,
    seen_of,
)
from brainbot.migration.source import (
    Reader,
    Record,
    connect,
    read_ahead,
    scan_batches,
    translated,
)
from brainbot.migration.transform import (
    Options,
    Plan,
    digest,
    ordered_hash,
    owner_items,
    plan,
)
from brainbot.migration.url import REDACTED, SourceURL
from brainbot.storage import codec

READ_CHUNK = 100  # values per bulk read
YIELD_EVERY = 50
"""Records planned between turns of the event loop: the listing runs alongside, one
request at a time, and would otherwise wait for a whole SCAN step's planning."""


@dataclass(frozen=True, slots=True)
class Difference:
    key: str
    problem: str


@dataclass
class VerifyReport:
    checked: int = 0
    entries: int = 0
    differences: list[Difference] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    values_read: int = 0
    api_requests: int = 0
    notes: list[str] = field(default_factory=list)
    """What verify could not check, and why (not differences)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "entries": self.entries,
            "differences": [{"key": d.key, "problem": d.problem} for d in self.differences],
            "skipped": dict(self.skipped),
            "values_read": self.values_read,
            "api_requests": self.api_requests,
            "notes": self.notes,
        }


def expected(p: Plan, item: PutItem) -> Expected:
    """What KV must hold for ``item`` of plan ``p``: its digest, metadata and expiries."""
    return expected_of(item, p.name)


async def verify(
    source: str,
    *,
    namespace: KVNamespace,
    options: Options | None = None,
    match: str | None = None,
    type_: str | None = None,
    tls_ca_file: str | None = None,
    source_password: str | None = None,
    ttl_tolerance_ms: int = TTL_TOLERANCE_MS,
    recheck_after: float = 2.0,
    sample: int = 100,
    work_dir: Path | None = None,
    lanes: int | None = None,
) -> VerifyReport:
    """Compare every key of ``source`` with ``namespace`` (the caller opens and closes it).
    ``lanes``: processes reading the source (None: one per CPU for a big source)."""
    from brainbot.migration.run import _requests

    options = options or Options()
    report = VerifyReport()
    before = _requests(namespace)
    redis = connect(source, tls_ca_file=tls_ca_file, password=source_password)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="verify-") as scratch:
        ledger = Ledger(Path(scratch) / "kv-state.sqlite3")
        check = _Check(namespace, ledger, report, ttl_tolerance_ms)
        listing = asyncio.get_running_loop().create_task(ledger.load(namespace, options.prefix))
        try:
            if lanes is None:
                with translated():
                    lanes = lanes_for(int(await redis.dbsize()))
            if lanes > 1:
                lane = Lane(source, source_password, tls_ca_file, options, match, type_, lanes)
                for path, result in await _run_lanes(lane, Path(scratch), listing):
                    ledger.absorb(path)
                    check.absorb(result)
            else:
                await _check_source(check, redis, options, match, type_, listing)
            owners, _ = owner_items(check.claims, options.prefix, int(time.time() * 1000))
            for item in owners:  # one plan per owner, so a report names the one that differs
                name = f"(owner of conversation {item.key.rsplit('/', 1)[-1]})"
                holder = Plan(Record(name.encode(), "set", set(), -1), "owners", [item])
                check.step([holder], counted=False)
            await listing
            ledger.expected_all()
            check.compare(sample)
            check.extra_messages(options.prefix)
            check.not_in_source(options.prefix, _mark(source, match, type_, options))
            await check.read_values(recheck_after)
        finally:
            if not listing.done():
                listing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listing
            ledger.close()
            await redis.aclose()
    report.api_requests = _requests(namespace) - before
    return report


def _mark(source: str, match: str | None, type_: str | None, options: Options) -> str:
    """The mark this migration stamps its entries with (``run.mark_of``)."""
    from brainbot.migration.run import fingerprint, mark_of

    return mark_of(fingerprint(source, match, type_, options))


LANE_MIN_KEYS = 50_000
"""Below this many source keys one process reads the source: starting lanes costs more."""
MAX_LANES = 4


def lanes_for(keys: int) -> int:
    """How many processes read a source of ``keys`` keys: one per CPU this process may use
    (planning is Python, one core each), for a big source."""
    if keys < LANE_MIN_KEYS:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, MAX_LANES))


async def _check_source(
    check: _Check,
    redis: Any,
    options: Options,
    match: str | None,
    type_: str | None,
    listing: asyncio.Task[int] | None,
    lane: tuple[int, int] | None = None,
) -> None:
    """Read and plan the source (the keys of ``lane`` only, if given) into ``check``."""
    reader = Reader(redis, whole=options.whole)

    async def read(hand_on: Callable[[list[Record]], Awaitable[None]]) -> None:
        async for _, keys in scan_batches(redis, match=match, type_=type_):
            if lane is not None:  # (index, of lanes)
                keys = [k for k in keys if zlib.crc32(k) % lane[1] == lane[0]]
            async for piece in reader.pieces(keys):
                await hand_on(piece)

    async for records in read_ahead(read, 2):
        if listing is not None and listing.done():
            listing.result()  # a listing that failed stops the run now
        now_ms = int(time.time() * 1000)
        for start in range(0, len(records), YIELD_EVERY):
            chunk = records[start : start + YIELD_EVERY]
            check.step([plan(r, options, now_ms) for r in chunk])
            await asyncio.sleep(0)  # the listing's next page goes out now


@dataclass(frozen=True)
class Lane:
    """What a lane process needs to read its share of the source. It goes to the process
    on its stdin (as JSON), so the password is in no process's argv."""

    source: str
    password: str | None
    tls_ca_file: str | None
    options: Options
    match: str | None
    type_: str | None
    lanes: int
    index: int = 0

    def __repr__(self) -> str:  # the source URL may hold a password
        return f"Lane({self.index} of {self.lanes})"

    def to_json(self) -> bytes:
        return orjson.dumps({**vars(self), "options": asdict(self.options)})

    @classmethod
    def from_json(cls, data: bytes) -> Lane:
        fields = orjson.loads(data)
        return cls(**{**fields, "options": Options(**fields["options"])})


@dataclass
class LaneResult:
    checked: int
    entries: int
    skipped: dict[str, int]
    claims: dict[str, list[str]]
    conversations: dict[str, str]


async def _run_lanes(
    lane: Lane, scratch: Path, listing: asyncio.Task[int]
) -> list[tuple[Path, LaneResult]]:
    """Each of ``lane.lanes`` processes (``python -m brainbot.migration.lane``) reads and
    plans the keys whose CRC-32 falls in its lane into a ledger file of its own, while
    this process lists KV (``listing``: if that fails, the lanes are stopped at once)."""
    paths = [scratch / f"lane-{i}.sqlite3" for i in range(lane.lanes)]
    processes = []
    work: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
    if listing.done():
        listing.result()  # failed already: no lane started for nothing
    try:
        for i, path in enumerate(paths):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the working directory on sys.path: a stray redis.py there
                "-m",
                "brainbot.migration.lane",
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            processes.append((process, replace(lane, index=i).to_json()))
        work = asyncio.gather(*(p.communicate(job) for p, job in processes))
        either: set[asyncio.Future[Any]] = {work, listing}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            listing.result()  # the listing ended first: if it failed, no use reading on
        outcomes = await work
    finally:
        if work is not None and not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        for process, _ in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    results = []
    for (process, _), (out, err) in zip(processes, outcomes, strict=True):
        try:
            answer = orjson.loads(out)
        except orjson.JSONDecodeError:
            answer = None
        if process.returncode != 0 or not isinstance(answer, dict) or "error" in answer:
            raise _lane_error(answer, err, lane)
        results.append(LaneResult(**answer))
    return list(zip(paths, results, strict=True))


def _lane_error(answer: Any, stderr: bytes, lane: Lane) -> BrainbotError:
    """The error a lane process reported, as the same brainbot error class. Its text is
    the lane's own (a crash's: the last line of its stderr), with the source URL and its
    password taken out, whatever the lane printed."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        kind = getattr(errors, str(answer.get("type")), None)
        text = _without_secrets(answer["error"], lane)
        if isinstance(kind, type) and issubclass(kind, BrainbotError):
            return kind(text)
        return MigrationError(text)
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    return MigrationError(f"A verify lane process failed: {_without_secrets(tail[0], lane)[:500]}")


def _without_secrets(text: str, lane: Lane) -> str:
    url = SourceURL.parse(lane.source, password=lane.password)
    text = text.replace(lane.source, url.redacted)
    for secret in sorted(filter(None, {lane.password, url.password}), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


async def read_lane(lane: Lane, path: Path) -> LaneResult:
    """A lane process's work: its keys of the source, planned into its ledger file."""
    redis = connect(lane.source, tls_ca_file=lane.tls_ca_file, password=lane.password)
    ledger = Ledger(path)
    report = VerifyReport()
    check = _Check(None, ledger, report, 0)
    try:
        await _check_source(
            check, redis, lane.options, lane.match, lane.type_, None, (lane.index, lane.lanes)
        )
    finally:
        ledger.close()
        await redis.aclose()
    return LaneResult(
        report.checked,
        report.entries,
        dict(report.skipped),
        {cid: sorted(owners) for cid, owners in check.claims.items()},
        check.conversations,
    )


class _Check:
    """The source's planned entries go into the ledger as they are read (while KV is
    listed into it); once both are in, SQLite compares them and hands Python only what
    differs, the entries to read, and the sample."""

    def __init__(
        self, kv: KVNamespace | None, ledger: Ledger, report: VerifyReport, tolerance_ms: int
    ) -> None:
        self.kv = kv
        self.ledger = ledger
        self.report = report
        self.tolerance_ms = tolerance_ms
        self.claims: dict[str, set[str]] = {}
        self.missing: list[Expected] = []
        self.unmarked: list[Expected] = []
        self.hashes: list[Expected] = []
        """Hashes whose digests differ: perhaps only in field order."""
        self.sampled: list[Expected] = []
        self.conversations: dict[str, str] = {}  # key prefix of its messages -> its name

    def step(self, plans: list[Plan], *, counted: bool = True) -> None:
        """Note the entries ``plans`` expect (``counted``: as keys checked, unlike the owners'
        entries, which come of other keys)."""
        rows = []
        for p in plans:
            if p.skipped:
                self.report.skipped[p.skipped] += 1
                continue
            if counted:
                self.report.checked += 1
            for owner, cid in p.claims:
                self.claims.setdefault(cid, set()).add(owner)
            if p.kind == "conversation" and p.items:
                self.conversations[p.items[0].key.rsplit("/", 1)[0] + "/"] = p.name
            rows += [expected(p, item) for item in p.items]
        self.report.entries += len(rows)
        self.ledger.expect(rows)

    def absorb(self, lane: LaneResult) -> None:
        """Count in what a lane process read (its entries are in its ledger file)."""
        self.report.checked += lane.checked
        self.report.entries += lane.entries
        self.report.skipped.update(lane.skipped)
        for cid, owners in lane.claims.items():  # a conversation's claims may span lanes
            self.claims.setdefault(cid, set()).update(owners)
        self.conversations.update(lane.conversations)

    def compare(self, sample: int) -> None:
        floor = expiry_floor(self.tolerance_ms)
        for want, seen in self.ledger.mismatches(self.tolerance_ms, floor):
            if seen is None:
                self.missing.append(want)
            elif seen.digest is None:
                self.unmarked.append(want)  # no digest: only its value can tell
            elif problem := difference(want, seen, self.tolerance_ms, floor):
                if problem == VALUE_DIFFERS and want.type == "hash":
                    self.hashes.append(want)
                else:
                    self.report.differences.append(Difference(want.report, problem))
        self.sampled = self.ledger.sample(sample, self.tolerance_ms, floor) if sample else []

    def not_in_source(self, prefix: str, mark: str) -> None:
        """What this migration wrote that the source no longer holds (the migration never
        deletes: a key deleted from Redis since stays on KV, an owner the source no longer
        names keeps access). Messages of a conversation still in Redis are counted by
        ``extra_messages``; those of one gone from Redis, per conversation. An owner entry
        counts only when the source now names another owner of that conversation (or
        several): one whose conversation no legacy record names any more (the session that
        named it expired in Redis) keeps its access, as the migration gave it."""
        if not self.ledger.marked(mark):
            if self.report.entries:
                self.report.notes.append(
                    "No KV entry carries this migration's mark: what the source no longer "
                    "holds was not looked for. Give verify the source URL and options the "
                    "migration ran with (--match, --type, --short-ttl, the patterns, "
                    "BRAINBOT_KV_PREFIX)."
                )
            return
        gone: Counter[str] = Counter()
        for name in self.ledger.not_expected(mark, expiry_floor(self.tolerance_ms)):
            head = name[len(prefix) :]
            if head.startswith("conv/"):
                conversation = name.rsplit("/", 1)[0] + "/"
                if conversation not in self.conversations:
                    gone[head.removeprefix("conv/").rsplit("/", 1)[0]] += 1
            elif head.startswith("user/"):
                cid = head.rsplit("/", 1)[-1]
                if cid not in self.claims:
                    continue
                problem = "an owner on KV that the source no longer names"
                self.report.differences.append(
                    Difference(f"(owner of conversation {cid})", problem)
                )
            else:
                problem = "on KV (migrated), not in the source: deleted from Redis since?"
                self.report.differences.append(Difference(head, problem))
        for cid, n in sorted(gone.items()):
            problem = f"{n} message(s) on KV, the conversation is not in Redis"
            self.report.differences.append(Difference(f"conversation {cid}", problem))

    def extra_messages(self, prefix: str) -> None:
        for conversation in self.conversations:
            high = prefix_upper_bound(conversation.encode("utf-8"))
            extra = self.ledger.unexpected(conversation, high)
            if extra:
                name = conversation[len(prefix) :].removeprefix("conv/").rstrip("/")
                self.report.differences.append(
                    Difference(f"conversation {name}", f"{extra} message(s) on KV not in Redis")
                )

    async def _values(self, wanted: list[Expected]) -> dict[str, Any]:
        assert self.kv is not None
        found: dict[str, Any] = {}
        keys = [w.key for w in wanted]
        for start in range(0, len(keys), READ_CHUNK):
            found.update(await self.kv.get_many(keys[start : start + READ_CHUNK]))
        self.report.values_read += len(keys)
        return found

    async def read_values(self, recheck_after: float) -> None:
        """Read what metadata cannot answer: missing keys (after a pause), entries without
        a digest, hashes whose digest differs, and the sample."""
        if self.missing:
            await asyncio.sleep(recheck_after)
        for wanted in (self.missing, self.unmarked, self.hashes, self.sampled):
            if not wanted:
                continue
            found = await self._values(wanted)
            floor = expiry_floor(self.tolerance_ms)
            now_ms = int(time.time() * 1000)
            for want in wanted:
                entry = found.get(want.key)
                if entry is None:
                    if not _gone_for_readers(want, now_ms, floor):
                        self.report.differences.append(Difference(want.report, "missing in KV"))
                    continue
                if not _same_value(entry, want):
                    self.report.differences.append(Difference(want.report, VALUE_DIFFERS))
                    continue
                seen = seen_of(entry.metadata, entry.expiration)
                if wanted is self.hashes:  # its value is the same: its stamp is old
                    seen = replace(seen, digest=None)
                if problem := difference(want, seen, self.tolerance_ms, floor):
                    self.report.differences.append(Difference(want.report, problem))


def _gone_for_readers(want: Expected, now_ms: int, floor: int) -> bool:
    """Whether ``want`` has expired for its readers by ``now_ms``: its exact expiry has
    passed, or (a message, which has none) KV's own is within KV's floor. Absent, such an
    entry was let go by KV (after verify read the key, before the listing reached it), as
    Redis let the key go: not lost."""
    if want.x is not None:
        return want.x <= now_ms
    return want.expiration is not None and want.expiration <= floor


def _same_value(entry: Entry, want: Expected) -> bool:
    """Whether KV's value is the one ``want`` digests; a hash's fields in any order."""
    if digest(entry.value) == want.digest:
        return True
    if want.type != "hash" or codec.type_of(entry.metadata) != "hash":
        return False
    binary = isinstance(entry.metadata, dict) and entry.metadata.get("e") == "b"
    try:
        ordered = ordered_hash(entry.value, binary)
    except (ValueError, AttributeError):  # not a hash's JSON (nor base64)
        return False
    return digest(ordered) == want.digest
