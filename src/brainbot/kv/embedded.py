"""The embedded KV: Workers KV semantics in one SQLite file, the offline default.

Why SQLite: it is in the standard library, several processes on one machine can share
one file (WAL mode, writers wait on a busy timeout instead of failing), a committed
transaction survives kill -9 (and, with ``synchronous=FULL``, power loss), and BLOB keys
compare with memcmp, which is exactly KV's UTF-8 byte order for list.

Why a private one-thread executor rather than aiosqlite: each KV operation is one whole
transaction (read, check expiry, write, sweep) that must run on the connection's thread
in a single hop; aiosqlite only offers statement-by-statement calls.

**Atomic across processes** (:meth:`EmbeddedKV.transact`): a read-modify-write runs as one
``BEGIN IMMEDIATE`` transaction, which holds SQLite's write lock from the read to the
commit, so any number of processes sharing the file (``uvicorn --workers N``, several
``brainbot serve``) never lose an update. Cost: one transaction, no extra round trip.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

import orjson

from brainbot.kv.errors import InvalidCursor, KVError, KVStorageError
from brainbot.kv.limits import (
    JSON,
    check_cursor,
    check_prefix,
    key_bytes,
    list_limit,
    validate_put,
)
from brainbot.kv.namespace import (
    STRONG,
    BulkResult,
    Change,
    Consistency,
    Entry,
    KeyInfo,
    ListPage,
    PutItem,
    R,
    Writes,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key        BLOB PRIMARY KEY,
    value      BLOB NOT NULL,
    expiration INTEGER,
    metadata   TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_expiration
    ON entries (expiration) WHERE expiration IS NOT NULL;
"""
_UPSERT = (
    "INSERT INTO entries (key, value, expiration, metadata) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "expiration = excluded.expiration, metadata = excluded.metadata"
)
_UPSERT_JSON = (
    "INSERT INTO entries (key, value, expiration, metadata) "
    "SELECT CAST(json_extract(j.value, '$[0]') AS BLOB), "
    "CAST(json_extract(j.value, '$[1]') AS BLOB), "
    "json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]') "
    "FROM json_each(?) AS j WHERE true "  # WHERE: the upsert clause after a SELECT needs one
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "expiration = excluded.expiration, metadata = excluded.metadata"
)
_JSON_ROWS = 2_000
"""Rows per ``_UPSERT_JSON`` statement (a few MB of JSON at most for small values)."""
_JSON_ROW_BYTES = 64 * 1024
"""Values bigger than this go row by row: the JSON copy would cost more than it saves."""
_LONG_NUMBER = re.compile(r"\d{20}")
_CURSOR_PREFIX = "c1."
_SWEEP_EVERY_WRITES = 512
_SWEEP_BATCH = 1000
_WRITE_CHUNK = 10_000
_READ_CHUNK = 500


def encode_cursor(last_key: bytes) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(last_key).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    if not cursor.startswith(_CURSOR_PREFIX):
        raise InvalidCursor(f"Invalid cursor {cursor[:40]!r}: not a cursor of this namespace.")
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        raw.decode("utf-8")
        if not raw:
            raise ValueError("empty")
    except (binascii.Error, ValueError):
        raise InvalidCursor(f"Invalid cursor {cursor[:40]!r}: it is corrupt.") from None
    return raw


def prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class EmbeddedKV:
    """A KV namespace stored in one SQLite file; safe to share between processes."""

    consistency: Consistency = STRONG
    coordinated = True
    """Read-modify-write is atomic across processes (:meth:`transact`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._writes = 0
        self._closed = False
        try:
            _private_file(self.path)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            _setup(self._conn, durable, time.monotonic() + busy_timeout)
            self._json_rows = _has_json(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise _storage_error(exc) from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainbot-kv")

    def __repr__(self) -> str:
        return f"EmbeddedKV(path={str(self.path)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run one whole transaction on the connection's thread; SQLite's own errors
        (locked past the busy timeout, I/O, disk full) leave as ``KVStorageError``."""
        if self._closed:
            raise KVError("This EmbeddedKV is closed.")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.OperationalError as exc:  # locked, I/O, disk full: retry later
            raise _storage_error(exc) from None
        except sqlite3.Error as exc:  # a bug or a damaged file: not "retry later"
            raise KVError(f"embedded KV: {type(exc).__name__}: {exc}") from None

    # -- reads -------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        raw = key_bytes(key)
        now = int(self._clock())

        def read() -> Entry | None:
            row = self._conn.execute(
                "SELECT value, expiration, metadata FROM entries WHERE key = ? "
                "AND (expiration IS NULL OR expiration > ?)",
                (raw, now),
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(read)

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        raws = [key_bytes(k) for k in keys]
        now = int(self._clock())

        return await self._run(lambda: self._select(keys, raws, now))

    def _select(
        self, keys: Sequence[str], raws: builtins.list[bytes], now: int
    ) -> dict[str, Entry | None]:
        """The live entries of ``keys`` (``raws``: their checked bytes), in chunks."""
        found: dict[bytes, Entry] = {}
        for start in range(0, len(raws), _READ_CHUNK):
            chunk = raws[start : start + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT key, value, expiration, metadata FROM entries "  # noqa: S608
                f"WHERE key IN ({marks}) AND (expiration IS NULL OR expiration > ?)",
                (*chunk, now),
            ):
                found[row[0]] = _entry(row[1:])
        return {k: found.get(r) for k, r in zip(keys, raws, strict=True)}

    async def list(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> ListPage:
        low = check_prefix(prefix)
        limit = list_limit(limit)
        cursor = check_cursor(cursor)
        after = decode_cursor(cursor) if cursor is not None else None
        high = prefix_upper_bound(low)
        now = int(self._clock())

        def read() -> ListPage:
            # one lower bound: given both, SQLite may seek to the prefix and scan up to the
            # cursor, which made listing a namespace quadratic (16 ms a page at 380,000 keys)
            args: builtins.list[object]
            if after is not None and after >= low:
                clauses, args = ["key > ?"], [after]
            else:
                clauses, args = ["key >= ?"], [low]
            clauses.append("(expiration IS NULL OR expiration > ?)")
            args.append(now)
            if high is not None:
                clauses.append("key < ?")
                args.append(high)
            rows = self._conn.execute(
                "SELECT key, expiration, metadata FROM entries WHERE "  # noqa: S608
                + " AND ".join(clauses)
                + " ORDER BY key LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            keys = [
                KeyInfo(
                    name=r[0].decode("utf-8"),
                    expiration=r[1],
                    metadata=_metadata(r[2]),
                )
                for r in rows
            ]
            return ListPage(keys=keys, cursor=encode_cursor(rows[-1][0]) if more else None)

        return await self._run(read)

    # -- atomic read-modify-write (the Coordinated capability) -----------------------------

    async def read_exact(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        return await self.get_many(keys)

    async def write_exact(self, writes: Writes) -> None:
        await self.transact(list(writes), lambda _: (writes, None))

    async def transact(self, keys: Sequence[str], change: Change[R]) -> R:
        """``change`` runs on this namespace's thread inside ``BEGIN IMMEDIATE``: no other
        process writes between its read and its commit."""
        raws = [key_bytes(k) for k in keys]

        def run() -> R:
            with self._transaction():
                writes, result = change(self._select(keys, raws, int(self._clock())))
                puts = [self._row(item) for item in writes.values() if item is not None]
                gone = [key_bytes(key) for key, item in writes.items() if item is None]
                self._store(puts, gone)
                return result

        return await self._run(run)

    # -- writes ------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expiration: int | None = None,
        expiration_ttl: int | None = None,
        metadata: JSON = None,
    ) -> None:
        row = self._row(PutItem(key, value, expiration, expiration_ttl, metadata))
        await self._run(lambda: self._write_rows([row]))

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        now = self._clock()  # one "now" for the request, as Cloudflare has
        rows = [validate_put(item, now) for item in items]  # all validated before any write
        for start in range(0, len(rows), _WRITE_CHUNK):
            chunk = rows[start : start + _WRITE_CHUNK]
            await self._run(lambda chunk=chunk: self._write_rows(chunk))  # type: ignore[misc]
        return BulkResult(successful_key_count=len(rows))

    async def delete(self, key: str) -> None:
        raw = key_bytes(key)
        await self._run(lambda: self._delete_raws([raw]))

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        raws = [key_bytes(k) for k in keys]
        for start in range(0, len(raws), _WRITE_CHUNK):
            chunk = raws[start : start + _WRITE_CHUNK]
            await self._run(lambda chunk=chunk: self._delete_raws(chunk))  # type: ignore[misc]
        return BulkResult(successful_key_count=len(raws))

    def _row(self, item: PutItem) -> tuple[bytes, bytes, int | None, str | None]:
        return validate_put(item, self._clock())

    def _write_rows(self, rows: builtins.list[tuple[bytes, bytes, int | None, str | None]]) -> None:
        with self._transaction():
            self._store(rows, [])

    def _delete_raws(self, raws: builtins.list[bytes]) -> None:
        with self._transaction():
            self._store([], raws)

    def _store(
        self,
        rows: builtins.list[tuple[bytes, bytes, int | None, str | None]],
        gone: builtins.list[bytes],
    ) -> None:
        """Upsert ``rows`` and delete ``gone`` (the caller holds the transaction)."""
        if rows:
            self._upsert(rows)
        if gone:
            self._conn.executemany("DELETE FROM entries WHERE key = ?", [(r,) for r in gone])
        self._count_writes(len(rows) + len(gone))

    def _upsert(self, rows: builtins.list[tuple[bytes, bytes, int | None, str | None]]) -> None:
        """Write ``rows`` (the last of a key wins). Text rows go as one JSON document per
        ``_JSON_ROWS``: one statement, during which the GIL is free. ``executemany`` gives
        it back and takes it again for every row, and a busy event loop (the migration's
        planner) then starves the writer: measured, 200,000 rows took 1.3 s alone and
        4.2 s beside a busy thread row by row, 2.0 s as JSON. Binary values, NULs (which
        JSON text would not carry through SQLite's text functions) and big values go row
        by row."""
        # the last write of a key wins; in key order, SQLite's B-trees fill in sequence
        latest = sorted({row[0]: row for row in rows}.values())
        if not self._json_rows:
            self._conn.executemany(_UPSERT, latest)
            return
        texts: builtins.list[tuple[str, str, int | None, str | None]] = []
        raw: builtins.list[tuple[bytes, bytes, int | None, str | None]] = []
        for row in latest:
            key, value = row[0], row[1]
            if len(value) > _JSON_ROW_BYTES or b"\0" in value or b"\0" in key:
                raw.append(row)
                continue
            try:
                texts.append((key.decode("utf-8"), value.decode("utf-8"), row[2], row[3]))
            except UnicodeDecodeError:
                raw.append(row)
        for start in range(0, len(texts), _JSON_ROWS):
            self._conn.execute(_UPSERT_JSON, (orjson.dumps(texts[start : start + _JSON_ROWS]),))
        if raw:
            self._conn.executemany(_UPSERT, raw)

    def _count_writes(self, n: int) -> None:
        """Expired rows are invisible at once; this reclaims their space now and then."""
        before, self._writes = self._writes, self._writes + n
        if before // _SWEEP_EVERY_WRITES != self._writes // _SWEEP_EVERY_WRITES:
            self._conn.execute(
                "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries "
                "WHERE expiration IS NOT NULL AND expiration <= ? LIMIT ?)",
                (int(self._clock()), _SWEEP_BATCH),
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so concurrent
    processes queue on the busy timeout instead of failing mid-transaction. Whatever
    fails, COMMIT included (I/O, a full disk), the transaction does not stay open: it
    would keep the write lock from every other process for as long as this one lives."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
        finally:
            if self._conn.in_transaction:  # (SQLite may have rolled back already)
                self._conn.execute("ROLLBACK")


def _metadata(text: str | None) -> JSON:
    """Stored metadata text as JSON values (orjson, several times faster than json; json
    for what orjson refuses, such as a NaN an older version may have stored, and for an
    integer of 20 digits or more, which orjson would read as a float)."""
    if text is None:
        return None
    if _LONG_NUMBER.search(text) is None:
        try:
            loaded: JSON = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            return loaded
    loaded = json.loads(text)
    return loaded


def _has_json(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38)."""
    try:
        conn.execute("SELECT count(*) FROM json_each('[1]')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def _setup(conn: sqlite3.Connection, durable: bool, deadline: float) -> None:
    """WAL mode and the schema. Switching a new file to WAL takes an exclusive lock that
    SQLite does not wait for (no busy handler): several processes opening one new file at
    once (``uvicorn --workers 4``) retry it until the busy timeout instead of failing."""
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _private_file(path: Path) -> None:
    """The database file (and so its WAL and shared-memory files, which SQLite creates with
    the same mode) readable by its owner only; its directory, if new, enterable by its owner
    only. A file found wider is narrowed: it may hold session data."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):  # left by an older version
        regular = companion.is_file() and not companion.is_symlink()
        if regular and companion.stat().st_mode & 0o077:
            companion.chmod(0o600)


def _storage_error(exc: sqlite3.Error | OSError) -> KVStorageError:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return KVStorageError(f"embedded KV: {type(exc).__name__}: {detail}")


def _entry(row: tuple[bytes, int | None, str | None]) -> Entry:
    value, expiration, metadata = row
    return Entry(
        value=bytes(value),
        expiration=expiration,
        metadata=_metadata(metadata),
    )
