"""``brainbot rollback``: undo one migration run, from its own records, and only where
nothing has changed since.

* ``delete_kv``: for each KV entry the run's manifest lists, and each the listing shows
  with this run's tag (what a run killed before its checkpoint wrote is in no manifest),
  KV is looked at first (one listing under the prefix, 1,000 entries a request, metadata
  only). An entry that still carries this run's tag and the digest the run wrote (the
  manifest's, when it has one) is deleted, or, if the run replaced
  a value with ``--overwrite``, given that value back (``kv-backup.jsonl.gz``; the last one
  backed up: the value KV held when the run last replaced it). An entry the bot changed
  since (no tag, another digest) or a later run rewrote is kept and reported. The run is
  then marked rolled back: later runs of the migration write its keys again.
* ``restore_to``: the run's backup of Redis is written back into a Redis (the source, or
  another one) key by key, only where that Redis does not hold the key or holds exactly
  the backed-up value (the TTL is then set again, counted from the backup). A key that
  changed there since is kept and reported; one whose TTL ran out since is counted.

A run id is only ever a run id of this data directory (``files.run_dir``), and every line
of the manifest must name that run: a path, or a manifest copied from elsewhere, is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from brainbot import json_bytes
from brainbot.errors import RollbackError
from brainbot.kv.limits import BULK_DELETE_MAX_KEYS, MIN_EXPIRATION_TTL
from brainbot.kv.namespace import KVNamespace, PutItem
from brainbot.migration import files
from brainbot.migration.ledger import Ledger, Seen, shape_of
from brainbot.migration.source import Reader, Record, connect, translated
from brainbot.migration.transform import stamp_of

CHUNK = 1_000
SHOWN = 100  # names of kept entries listed in the report


@dataclass
class RollbackReport:
    run_id: str
    kv_deleted: int = 0
    kv_restored: int = 0
    """Entries the run had overwritten, given their earlier value back."""
    kv_absent: int = 0
    kv_given_back_before: int = 0
    """Entries holding the earlier value the run replaced already: an attempt of this
    rollback before (killed, or run again) gave it back."""
    kv_kept: Counter[str] = field(default_factory=Counter)
    """Entries left as they are, by reason (changed since the run...)."""
    kv_unsuccessful: list[str] = field(default_factory=list)
    redis_restored: int = 0
    redis_unchanged: int = 0
    redis_kept: int = 0
    """Keys that changed in the target Redis since the run: not touched."""
    redis_expired: int = 0
    kept_names: list[str] = field(default_factory=list)
    """The first names of what was kept (KV keys, or Redis keys as text)."""

    def keep(self, reason: str, name: str) -> None:
        if reason.startswith("redis"):
            self.redis_kept += 1
        else:
            self.kv_kept[reason] += 1
        if len(self.kept_names) < SHOWN:
            self.kept_names.append(name)

    def to_json(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}


CHANGED_ON_KV = "changed on KV since the run"
REWRITTEN = "rewritten by a later run"
CHANGED_IN_REDIS = "redis: changed since the run"


def _lines(path: Path, *, compressed: bool = False) -> Iterator[tuple[int, Any]]:
    """The JSON lines of one of the run's files with their numbers (from 1), or a
    :class:`RollbackError` naming the file and the line where it is damaged (cut short,
    not gzip, not JSON), instead of a traceback or click's bare "Aborted." (``EOFError``)."""
    n = 0
    try:
        for line in files.lines(path, compressed=compressed):
            n += 1
            yield n, line
    except (EOFError, gzip.BadGzipFile, zlib.error, ValueError) as exc:  # ValueError: JSON
        raise RollbackError(
            f"{path.name} is damaged after its line {n} ({type(exc).__name__}: {exc})."
        ) from None


def _damaged(path: Path, n: int, why: str) -> RollbackError:
    return RollbackError(f"{path.name} is damaged at its line {n}: {why}.")


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _fields(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(f, str) and isinstance(v, str) for f, v in value.items())
    )


def _scored(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(e, list)
            and len(e) == 2
            and isinstance(e[0], str)
            and (isinstance(e[1], int | float) or e[1] in ("inf", "-inf"))
            for e in value
        )
    )


_VALUE_SHAPES: dict[str, Callable[[Any], bool]] = {
    "string": _text,
    "list": _texts,
    "set": _texts,
    "hash": _fields,
    "zset": _scored,
}
"""The shape of a backed-up value of each type (base64 text; a container never empty:
Redis holds no empty container, and RPUSH/SADD/... of nothing is an error)."""


def _backed_up(path: Path, n: int, record: Any) -> dict[str, Any]:
    """Line ``n`` of ``backup.jsonl.gz``, refused unless it is a record restore can write
    (checked before any key is written: a damaged line must not stop a restore halfway,
    nor pass for a key that expired)."""
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        raise _damaged(path, n, "no key")
    shape = _VALUE_SHAPES.get(str(record.get("type")))
    if shape is None:
        raise _damaged(path, n, f"type {record.get('type')!r} is none Redis restores")
    if not shape(record.get("value")):
        raise _damaged(path, n, f"not a value of a {record['type']}")
    if not all(type(record.get(f)) is int for f in ("pttl", "at_ms")):
        raise _damaged(path, n, "no TTL and time of reading")
    return record


def _manifest(run_path: Path, run_id: str) -> Iterator[dict[str, Any]]:
    for _, line in _lines(run_path / "manifest.jsonl"):
        if line.get("run") != run_id or not isinstance(line.get("kv", []), list):
            raise RollbackError(
                f"The manifest of {run_id} has lines of another run (or of an older version of "
                "brainbot, without digests): refusing to act on it."
            )
        yield line


def _rolled_back_tags(runs: Path, state: dict[str, Any]) -> set[str]:
    """The tags of this migration's runs rolled back already: a value one of them wrote,
    backed up by a later run, is not given back (it was undone)."""
    from brainbot.migration.run import _states

    fingerprint = str(state.get("fingerprint", ""))
    return {
        files.run_tag(s["run_id"]) for s in _states(runs, fingerprint) if s.get("rolled_back_at")
    }


def _mark(state: dict[str, Any]) -> str:
    """The mark of the migration the run belongs to (``run.mark_of``)."""
    from brainbot.migration.run import mark_of

    return str(state.get("mark") or mark_of(str(state.get("fingerprint", ""))))


def _prefix(state: dict[str, Any]) -> str:
    """The prefix the run wrote under (from its fingerprint)."""
    try:
        options = orjson.loads(state["fingerprint"])[3]
        return str(options.get("prefix", ""))
    except (KeyError, IndexError, TypeError, orjson.JSONDecodeError):
        raise RollbackError("The run's state file does not say where it wrote.") from None


async def rollback(
    run_id: str,
    *,
    runs: Path,
    namespace: KVNamespace | None = None,
    delete_kv: bool = False,
    restore_to: str | None = None,
    tls_ca_file: str | None = None,
    restore_password: str | None = None,
) -> RollbackReport:
    """Undo run ``run_id`` (its files under ``runs``): ``delete_kv`` deletes from
    ``namespace`` what the run wrote and nobody changed since; ``restore_to`` writes its
    backup into that Redis where the key is absent or unchanged."""
    if not delete_kv and restore_to is None:
        raise RollbackError("Nothing to do: choose delete_kv and/or restore_to.")
    if delete_kv and namespace is None:
        raise RollbackError("Deleting a run's KV entries needs the namespace it wrote to.")
    run_path = files.run_dir(runs, run_id)
    mark = _mark(files.read_json(run_path / "state.json"))
    with files.exclusive(runs, mark, RollbackError):  # no run of it under way meanwhile
        return await _rollback(
            run_path, run_id, mark, namespace, delete_kv, restore_to, tls_ca_file, restore_password
        )


async def _rollback(
    run_path: Path,
    run_id: str,
    mark: str,
    namespace: KVNamespace | None,
    delete_kv: bool,
    restore_to: str | None,
    tls_ca_file: str | None,
    restore_password: str | None,
) -> RollbackReport:
    state = files.read_json(run_path / "state.json")
    report = RollbackReport(run_id)
    if delete_kv:
        assert namespace is not None
        written: dict[str, str | None] = {
            e[0]: e[1] for line in _manifest(run_path, run_id) for e in line.get("kv", [])
        }
        tag = files.run_tag(run_id)
        prefix = _prefix(state)
        undone = _rolled_back_tags(run_path.parent, state)
        at = time.time()
        await _undo_kv(namespace, run_path, prefix, mark, tag, written, report, undone, at)
        state["rolled_back_at"] = at  # never resumed; the keys it deleted are forgotten
        files.write_json(run_path / "state.json", state)
    if restore_to is not None:
        list(_manifest(run_path, run_id))  # refuse a foreign manifest before touching Redis
        await _restore_redis(restore_to, run_path, report, tls_ca_file, restore_password)
    # in ms (as undone-<ms>.jsonl): to the second, a rollback run again at once wrote over
    # the first one's report (one rollback of a run at a time: the run's lock)
    files.write_json(run_path / f"rollback-{int(time.time() * 1000)}.json", report.to_json())
    return report


async def _undo_kv(
    kv: KVNamespace,
    run_path: Path,
    prefix: str,
    mark: str,
    tag: str,
    written: dict[str, str | None],
    report: RollbackReport,
    rolled_back: set[str],
    at: float,
) -> None:
    """Delete or restore, from one listing, what the run wrote and nobody changed; the
    keys it deletes go to ``undone-<ms>.jsonl`` (``at``: when this rollback began)."""
    undone = run_path / f"undone-{int(at * 1000)}.jsonl"
    ledger = Ledger(run_path / "rollback-kv-state.sqlite3")
    earlier = _Earlier()
    try:
        await ledger.load(kv, prefix)
        for name in ledger.names(run=tag, mark=mark, prefix=prefix):
            written.setdefault(name, None)  # the run's, and in no manifest: any digest
        earlier.load(run_path / "kv-backup.jsonl.gz")  # refused before any change if damaged
        names = list(written)
        delete: list[str] = []  # sent 10,000 a request (one bulk delete's most)
        unstamped: list[str] = []
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            seen = ledger.lookup(chunk)
            before_of = earlier.lookup(chunk)
            restore: list[PutItem] = []
            now = time.time()
            for name in chunk:
                entry = seen.get(name)
                if entry is None:
                    report.kv_absent += 1
                elif entry.run == tag and written[name] in (None, entry.digest):
                    before = before_of.get(name)
                    expiration = before.get("expiration") if before else None
                    was = stamp_of(before.get("metadata")) if before else None
                    if (
                        before is None
                        or (expiration is not None and expiration <= now)
                        or (was is not None and was.mark == mark and was.run in rolled_back)
                    ):
                        delete.append(name)
                    else:  # KV keeps nothing under 60 s: a shorter expiry gets KV's floor
                        if expiration is not None:
                            expiration = max(expiration, int(now) + MIN_EXPIRATION_TTL + 1)
                        restore.append(
                            PutItem(
                                name,
                                files.unb64(before["value"]),
                                expiration=expiration,
                                metadata=before.get("metadata"),
                            )
                        )
                elif (before := before_of.get(name)) is not None and _holds(entry, before):
                    if entry.run is None:
                        unstamped.append(name)  # the bot's value back? its value says
                    else:
                        report.kv_given_back_before += 1
                elif entry.mark == mark and entry.digest is not None and entry.run != tag:
                    report.keep(REWRITTEN, name)
                else:
                    report.keep(CHANGED_ON_KV, name)
            if unstamped:
                await _given_back(kv, unstamped, before_of, report)
                unstamped = []
            if len(delete) >= BULK_DELETE_MAX_KEYS or start + CHUNK >= len(names):
                await _delete(kv, delete, report, undone)
                delete = []
            if restore:  # (not undone: KV holds what it held before the run, and that
                result = await kv.put_many(restore)  # earlier value's record stands)
                report.kv_restored += result.successful_key_count
                report.kv_unsuccessful += list(result.unsuccessful_keys)
    finally:
        ledger.discard()
        earlier.close()


class _Earlier:
    """The KV values an ``--overwrite`` run replaced (``kv-backup.jsonl.gz``, the last line
    of each key: what KV held when the run replaced it), in a private temporary SQLite
    file (deleted when closed), read a chunk of names at a time. Held in a dict, they took
    the whole rollback's memory: a million replaced values of 1 KB, some 2 GB."""

    def __init__(self) -> None:
        # "": temporary, on disk; autocommit, or one open transaction keeps every page
        # in memory (measured: 32 MB for 33 MB of lines, 3 MB with each batch committed)
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute("CREATE TABLE e (key TEXT PRIMARY KEY, line BLOB) WITHOUT ROWID")

    def load(self, path: Path) -> None:
        """Every line of ``path``, each checked before any KV entry is deleted or restored."""
        rows: list[tuple[str, bytes]] = []
        for n, line in _lines(path, compressed=True):
            if not (isinstance(line, dict) and isinstance(line.get("key"), str)) or not (
                isinstance(line.get("value"), str)
                and (line.get("expiration") is None or type(line["expiration"]) is int)
            ):
                raise _damaged(path, n, "not a KV entry")
            rows.append((line["key"], json_bytes.dumps(line)))  # (orjson's keep its buffer)
            if len(rows) >= CHUNK:
                self._insert(rows)
                rows = []
        self._insert(rows)

    def _insert(self, rows: list[tuple[str, bytes]]) -> None:
        with self._db:  # one transaction a batch (autocommit would make one a row)
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO e VALUES (?, ?)", rows)

    def lookup(self, names: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(names), 500):  # (SQLite's bound variables: 999 at least)
            part = names[start : start + 500]
            marks = ",".join("?" * len(part))
            query = f"SELECT key, line FROM e WHERE key IN ({marks})"  # noqa: S608 (marks)
            found.update((key, orjson.loads(line)) for key, line in self._db.execute(query, part))
        return found

    def close(self) -> None:
        self._db.close()


def _holds(entry: Seen, before: dict[str, Any]) -> bool:
    """Whether the listed entry may be the earlier one the run replaced, given back by an
    attempt of this rollback before (killed, or run again): the same metadata, and the
    same stamp (whose digest is its value's; unstamped, its value is read to tell)."""
    was = stamp_of(before.get("metadata"))
    stamp = (entry.mark, entry.run, entry.digest)
    return entry.shape == shape_of(before.get("metadata")) and stamp == (
        (was.mark, was.run, was.digest) if was is not None else (None, None, None)
    )


async def _given_back(
    kv: KVNamespace, names: list[str], earlier: dict[str, dict[str, Any]], report: RollbackReport
) -> None:
    """Count those of ``names`` (unstamped entries with the metadata of the earlier value)
    that hold that value: given back already, not changed by the bot since the run. Read
    only on a second attempt: a first finds the run's own entries there."""
    found = await kv.get_many(names)
    for name in names:
        entry = found.get(name)
        if entry is not None and entry.value == files.unb64(earlier[name]["value"]):
            report.kv_given_back_before += 1
        else:
            report.keep(CHANGED_ON_KV, name)


async def _delete(kv: KVNamespace, names: list[str], report: RollbackReport, undone: Path) -> None:
    """Delete ``names``, one bulk request per 10,000 (the most one takes), recording them
    in ``undone`` first: later runs of the migration no longer count them as written
    before. Recorded before the request, so a rollback killed right after it leaves no
    deleted key counted as written (its next attempt sees it absent, and every later run
    would call it deleted by the bot and never write it again); one the request failed to
    delete is then merely not protected from re-creation until the rollback is run again.
    Keys the rollback kept (the bot changed them) or restored stay counted, so a later run
    still does not re-create one the bot deletes."""
    if not names:
        return
    files.append(undone, [orjson.dumps(n) for n in names])
    result = await kv.delete_many(names)
    report.kv_deleted += result.successful_key_count
    report.kv_unsuccessful += list(result.unsuccessful_keys)


def _backup(run_path: Path) -> Iterator[dict[str, Any]]:
    """The last backed-up record of each key (a resumed run may have backed a key up
    twice), streamed: memory holds an 8-byte digest per key, not the values."""
    path = run_path / "backup.jsonl.gz"
    last: dict[bytes, int] = {}
    for n, record in _lines(path, compressed=True):
        key = _backed_up(path, n, record)["key"]
        last[hashlib.blake2b(key.encode(), digest_size=8).digest()] = n
    for n, record in _lines(path, compressed=True):
        if last.get(hashlib.blake2b(record["key"].encode(), digest_size=8).digest()) == n:
            yield record


def _encoded(record: Record) -> Any:
    """A record's value in the backup's form (base64), to compare with a backed-up one."""
    from brainbot.migration.run import backup_line

    return orjson.loads(backup_line(record, 0))["value"]


def _same(backed_up: dict[str, Any], current: Record) -> bool:
    if current.type != backed_up["type"]:
        return False
    now, then = _encoded(current), backed_up["value"]
    if isinstance(now, list) and current.type in ("set", "zset"):
        return sorted(map(orjson.dumps, now)) == sorted(map(orjson.dumps, then))
    return bool(now == then)


async def _restore_redis(
    url: str,
    run_path: Path,
    report: RollbackReport,
    tls_ca_file: str | None,
    password: str | None,
) -> None:
    redis = connect(url, tls_ca_file=tls_ca_file, password=password)
    reader = Reader(redis)
    try:
        with translated():
            chunk: list[dict[str, Any]] = []
            for record in _backup(run_path):
                chunk.append(record)
                if len(chunk) >= CHUNK:
                    await _restore_chunk(redis, reader, chunk, report)
                    chunk = []
            if chunk:
                await _restore_chunk(redis, reader, chunk, report)
    finally:
        await redis.aclose()


async def _restore_chunk(
    redis: Any, reader: Reader, records: list[dict[str, Any]], report: RollbackReport
) -> None:
    now_ms = time.time() * 1000
    keys = [files.unb64(r["key"]) for r in records]
    current = {r.key: r for r in await reader.read(keys)}
    pipe = redis.pipeline(transaction=False)
    renames: list[tuple[int, bytes]] = []  # (reply index of RENAMENX, key)
    for key, record in zip(keys, records, strict=True):
        expire_at = record["at_ms"] + record["pttl"] if record["pttl"] >= 0 else None
        if expire_at is not None and expire_at <= now_ms:
            report.redis_expired += 1
            continue
        there = current.get(key)
        if there is not None and there.type != "none":
            if there.value is None or not _same(record, there):
                report.keep(CHANGED_IN_REDIS, _shown(key))
                continue
            report.redis_unchanged += 1
            if expire_at is not None:
                pipe.pexpireat(key, int(expire_at))
            continue
        renames.append((_write(pipe, key, record, expire_at), key))
    replies = await pipe.execute(raise_on_error=False)
    expired = {index for index, _ in renames if _scratch_expired(replies[index])}
    for index, reply in enumerate(replies):
        if isinstance(reply, Exception) and index not in expired:
            raise reply
    for index, key in renames:
        if index in expired:
            report.redis_expired += 1
        elif replies[index]:
            report.redis_restored += 1
        else:  # created there between our read and our write: theirs stays
            report.keep(CHANGED_IN_REDIS, _shown(key))


def _scratch_expired(reply: Any) -> bool:
    """Whether a RENAMENX found its scratch key gone: its TTL ran out by the target's
    clock (behind ours, or the last milliseconds passed while the pipeline ran), so the
    key is one expired since the backup, not a reason to abandon the restore."""
    return isinstance(reply, Exception) and "no such key" in str(reply).lower()


def _shown(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _write(pipe: Any, key: bytes, record: dict[str, Any], expire_at: float | None) -> int:
    """Queue the key's value under a scratch name, then ``RENAMENX`` it into place: the
    key appears whole and only if it is still absent. Returns the RENAMENX's reply index."""
    raw = files.unb64
    kind, value = record["type"], record["value"]
    scratch = key + b"\x00brainbot-restore-" + secrets.token_hex(4).encode()
    key, final = scratch, key
    if kind == "string":
        pipe.set(key, raw(value))
    elif kind == "list":
        pipe.rpush(key, *[raw(v) for v in value])
    elif kind == "hash":
        pipe.hset(key, mapping={raw(k): raw(v) for k, v in value.items()})
    elif kind == "set":
        pipe.sadd(key, *[raw(v) for v in value])
    elif kind == "zset":
        pipe.zadd(key, {raw(m): float(s) for m, s in value})
    if expire_at is not None:
        pipe.pexpireat(key, int(expire_at))
    pipe.renamenx(key, final)
    index = len(pipe.command_stack) - 1
    pipe.delete(key)  # still there only if the rename was refused
    return index
