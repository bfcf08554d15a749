"""What KV holds, by name, from a listing: the migration's local view of the namespace.

Every entry the migration writes carries in its metadata a stamp: the migration's mark,
the run's tag and a digest of its value (``transform.stamp_of``). A listing returns metadata with
the names, 1,000 a request, without values, so one pass over the namespace tells for
every key whether it is absent, still exactly what a run of this migration wrote, or
something else (the bot wrote it since). The ledger keeps that in a SQLite file of the run
(on disk, so a namespace of millions of keys costs no memory) for the run, ``verify`` and
``rollback`` to look keys up in batches; ``verify`` also puts there what the source says
KV must hold, and SQLite compares the two in one join.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from brainbot.kv.limits import MAX_SAFE_INTEGER
from brainbot.kv.namespace import KVNamespace, PutItem
from brainbot.migration.transform import STAMP, digest, digest_of, stamp_of
from brainbot.storage import codec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    name BLOB PRIMARY KEY, mark TEXT, run TEXT, digest TEXT, expiration INTEGER,
    type TEXT, x INTEGER, shape TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS earlier (name BLOB PRIMARY KEY, expiration INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expected (
    name BLOB, report TEXT, digest TEXT, type TEXT, typed INTEGER, x INTEGER, expiration INTEGER,
    shape TEXT
);
"""
TTL_TOLERANCE_MS = 5_000
"""How far two exact expiries may be apart and still be the same one (the source's TTL is
read at a different moment each time)."""
_MATCH = """coalesce((
    k.digest = e.digest AND (e.typed = 0 OR e.type = k.type) AND k.shape = e.shape
    AND ((e.x IS NULL) = (k.x IS NULL))
    AND (e.x IS NULL OR abs(e.x - k.x) <= :tolerance)
    AND ((e.expiration IS NULL) = (k.expiration IS NULL))
    AND (e.expiration IS NULL OR abs(e.expiration - k.expiration) <= :tolerance / 1000
         OR (e.expiration <= :floor AND k.expiration <= :floor))
), 0)"""
"""An expected entry KV holds exactly (digest, type, the rest of its metadata, both
expiries within the tolerance), by the rules of ``difference``: Python looks only at what
this does not call a match."""
_EXPECTED_COLUMNS = "e.name, e.report, e.digest, e.type, e.typed, e.x, e.expiration, e.shape"
_EXPECT_JSON = (
    "INSERT INTO expected SELECT CAST(json_extract(j.value, '$[0]') AS BLOB), "
    "json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]'), "
    "json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]'), "
    "json_extract(j.value, '$[5]'), json_extract(j.value, '$[6]'), "
    "json_extract(j.value, '$[7]') FROM json_each(?) AS j"
)
_NOT_SHAPE = frozenset({STAMP, "x", "since"})
"""Metadata that differs from run to run by design: the stamp, the exact expiry (compared
with a tolerance) and when an owner entry was written."""
FORGET = -1
"""In place of an expiry for ``Ledger.remember``: a key a rollback deleted."""
_LOOKUP_CHUNK = 500
_FAR = 2**62
"""Exact expiries beyond this are kept as this: SQLite holds 64-bit integers, and no real
expiry (ms since 1970) comes near it, so the comparison's answer does not change."""


class Expected(NamedTuple):
    """An entry the source says KV must hold (verify), as the ledger keeps it."""

    name: bytes
    report: str
    """The Redis key, as reports show it."""
    digest: str
    type: str
    typed: int
    """Whether its metadata names its type (only then is the type compared)."""
    x: int | None
    """Its exact expiry (ms) from its metadata, if any."""
    expiration: int | None
    """KV's own expiry (s) it asks for."""
    shape: str
    """``shape_of`` its metadata."""

    @property
    def key(self) -> str:
        return self.name.decode("utf-8")


def shape_of(metadata: Any) -> str:
    """A digest of what an entry's metadata says besides its stamp and exact expiry: its
    type, its encoding (base64 or text), a message's role, time and summary. The stamp's
    digest covers the value only; an entry whose metadata changed is not the same entry."""
    if isinstance(metadata, dict):
        metadata = {k: v for k, v in metadata.items() if k not in _NOT_SHAPE}
    plain = _as_javascript(metadata)
    try:
        text = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what orjson cannot write (an integer past 64 bits)
        text = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _as_javascript(value: Any) -> Any:
    """JSON as a Worker keeps it: JavaScript has one number type, a double, so a float
    with no fraction (a message time of 1700000000.0) comes back from Cloudflare as an
    integer, and an integer past 2**53 as the double nearest to it."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        try:
            value = float(value)
        except OverflowError:  # past any double: not a number a Worker could hold
            return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _as_javascript(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_javascript(v) for v in value]
    return value


def expected_of(item: PutItem, report: str) -> Expected:
    """What KV must hold for ``item`` (``report``: the Redis key, as reports show it)."""
    meta = item.metadata if isinstance(item.metadata, dict) else {}
    exact = meta.get("x")
    return Expected(
        item.key.encode("utf-8"),
        report,
        digest_of(item) or digest(item.value),  # a stamped item carries its digest
        codec.type_of(meta),
        int("t" in meta),
        exact if isinstance(exact, int) else None,
        item.expiration,
        shape_of(item.metadata),
    )


def expiry_floor(tolerance_ms: int, now: float | None = None) -> int:
    """KV expiries up to this second may be KV's 60-second floor rather than the source's
    TTL (``codec.kv_expiration``): two of them are the same expiry."""
    return int(time.time() if now is None else now) + 62 + tolerance_ms // 1000


VALUE_DIFFERS = "value differs"


def difference(want: Expected, seen: Seen, tolerance_ms: int, floor: int) -> str | None:
    """What differs between an expected entry and the listed one (None: nothing); the
    rules ``_MATCH`` applies in SQL."""
    if seen.digest is not None and seen.digest != want.digest:
        return VALUE_DIFFERS
    if want.typed and want.type != seen.type:
        return f"type is {seen.type} on KV, {want.type} in Redis"
    if seen.shape is not None and seen.shape != want.shape:
        return "metadata differs (encoding, or a message's summary)"
    exact, actual = want.x, seen.x
    if (exact is None) != (actual is None):
        return f"TTL differs: {'none' if actual is None else 'set'} on KV"
    if exact is not None and actual is not None and abs(exact - actual) > tolerance_ms:
        return f"expiry differs by {abs(exact - actual)} ms"
    mine, theirs = want.expiration, seen.expiration
    if (mine is None) != (theirs is None):
        return "TTL differs"
    if (
        mine is not None
        and theirs is not None
        and abs(mine - theirs) > tolerance_ms // 1000
        and not (mine <= floor and theirs <= floor)
    ):
        return f"KV's own expiry differs by {abs(mine - theirs)} s"
    return None


@dataclass(frozen=True, slots=True)
class Seen:
    """A key as the listing showed it."""

    mark: str | None
    run: str | None
    digest: str | None
    expiration: int | None
    type: str = "string"
    """The Redis type its metadata records (``codec.type_of``)."""
    x: int | None = None
    """The exact expiry (ms) its metadata records (``codec.expiry_of``)."""
    shape: str | None = None
    """``shape_of`` its metadata (None: not looked at)."""


def seen_of(metadata: Any, expiration: int | None) -> Seen:
    """What a listing (or a read) of an entry with this metadata shows."""
    stamp = stamp_of(metadata)
    exact = codec.expiry_of(metadata)
    return Seen(
        stamp.mark if stamp else None,
        stamp.run if stamp else None,
        stamp.digest if stamp else None,
        expiration,
        codec.type_of(metadata),
        None if exact is None else max(-_FAR, min(_FAR, int(exact))),
        shape_of(metadata),
    )


class Ledger:
    def __init__(self, path: Path) -> None:
        """A fresh ledger at ``path``: one a killed run left there (of another moment, maybe
        of another version's schema) is replaced, never read."""
        self.path = path
        self.entries = 0
        for stale in (path, path.with_name(path.name + "-journal")):
            stale.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def discard(self) -> None:
        """Close and delete the file (it is only a view of KV at one moment)."""
        self.close()
        self.path.unlink(missing_ok=True)

    async def load(self, namespace: KVNamespace, prefix: str) -> int:
        """List everything under ``prefix`` into the ledger; returns the number of names
        (one list request per 1,000)."""
        cursor: str | None = None
        while True:
            page = await namespace.list(prefix=prefix, cursor=cursor, limit=1000)
            rows = []
            for info in page.keys:
                s = seen_of(info.metadata, info.expiration)
                rows.append(
                    (
                        info.name.encode("utf-8"),
                        s.mark,
                        s.run,
                        s.digest,
                        s.expiration,
                        s.type,
                        s.x,
                        s.shape,
                    )
                )
            if rows:  # one transaction a page (not one a row)
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                    )
                self.entries += len(rows)
            if page.cursor is None:
                return self.entries
            cursor = page.cursor

    def remember(self, written: Iterable[tuple[str, int | None]]) -> None:
        """Note the names earlier runs of this migration wrote (from their manifests, oldest
        run first), with the KV expiry the last run that wrote each gave it (None: none, or
        not recorded): that run's entry is the one KV held. An expiry of ``FORGET`` forgets
        the name (a rollback deleted it)."""
        note = (
            "INSERT INTO earlier VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET expiration = excluded.expiration"
        )
        with self._db:
            self._db.execute("BEGIN")
            for name, expiration in written:
                raw = name.encode("utf-8")
                if expiration == FORGET:
                    self._db.execute("DELETE FROM earlier WHERE name = ?", (raw,))
                else:
                    self._db.execute(note, (raw, expiration))

    def written_before(self, names: Sequence[str], now: float) -> set[str]:
        """Those of ``names`` an earlier run wrote with an expiry still ahead at ``now``:
        absent from KV, they were deleted there (one KV let expire is not)."""
        found: set[str] = set()
        raws = [n.encode("utf-8") for n in names]
        for start in range(0, len(raws), _LOOKUP_CHUNK):
            chunk = raws[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = (
                f"SELECT name FROM earlier WHERE name IN ({marks}) "  # noqa: S608
                "AND (expiration IS NULL OR expiration > ?)"
            )
            rows = self._db.execute(query, [*chunk, int(now)])
            found.update(bytes(name).decode("utf-8") for (name,) in rows)
        return found

    def marked(self, mark: str) -> bool:
        """Whether any listed entry carries this migration's ``mark``."""
        return (
            self._db.execute("SELECT 1 FROM kv WHERE mark = ? LIMIT 1", (mark,)).fetchone()
            is not None
        )

    def lookup(self, names: Sequence[str]) -> dict[str, Seen]:
        """The listed state of those of ``names`` KV holds (absent names are left out)."""
        found: dict[str, Seen] = {}
        if not self.entries:
            return found
        raws = [n.encode("utf-8") for n in names]
        for start in range(0, len(raws), _LOOKUP_CHUNK):
            chunk = raws[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for name, *seen in self._db.execute(
                "SELECT name, mark, run, digest, expiration, type, x, shape "  # noqa: S608
                f"FROM kv WHERE name IN ({marks})",
                chunk,
            ):
                found[bytes(name).decode("utf-8")] = Seen(*seen)
        return found

    # -- verify: what the source says KV must hold, compared in SQL --------------------------

    def expect(self, rows: Sequence[Expected]) -> None:
        """Note entries the source plans (compared with the listing by ``mismatches``).
        One JSON document per call, so one statement: the GIL stays free while SQLite
        inserts (row by row, a busy thread beside it would starve the insert); names with
        a NUL, which SQLite's text functions may not carry, go row by row."""
        plain = [r for r in rows if b"\0" not in r.name]
        with self._db:
            self._db.execute("BEGIN")
            if plain:
                document = orjson.dumps([(r.name.decode("utf-8"), *r[1:]) for r in plain])
                self._db.execute(_EXPECT_JSON, (document,))
            if len(plain) < len(rows):
                rest = [r for r in rows if b"\0" in r.name]
                self._db.executemany("INSERT INTO expected VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rest)

    def absorb(self, path: Path) -> None:
        """Take in the expected entries another ledger file holds (a verify lane's)."""
        self._db.execute("ATTACH DATABASE ? AS lane", (str(path),))
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("INSERT INTO expected SELECT * FROM lane.expected")
        finally:
            self._db.execute("DETACH DATABASE lane")

    def expected_all(self) -> None:
        """Every expected entry is in: index them by name (one sort, not one per insert)."""
        self._db.execute("CREATE INDEX IF NOT EXISTS expected_by_name ON expected (name)")

    def mismatches(self, tolerance_ms: int, floor: int) -> Iterator[tuple[Expected, Seen | None]]:
        """Every expected entry KV does not hold exactly, with what the listing showed of
        it (None: not listed). Matches stay in SQLite: Python sees only differences."""
        query = (
            f"SELECT {_EXPECTED_COLUMNS}, k.name, k.mark, k.run, k.digest, k.expiration, "  # noqa: S608
            f"k.type, k.x, k.shape FROM expected e LEFT JOIN kv k ON k.name = e.name "
            f"WHERE {_MATCH} = 0"
        )
        for row in self._db.execute(query, {"tolerance": tolerance_ms, "floor": floor}):
            yield Expected(*row[:8]), None if row[8] is None else Seen(*row[9:])

    def sample(self, n: int, tolerance_ms: int, floor: int) -> list[Expected]:
        """About ``n`` matching entries picked at random (their values are read again),
        from anywhere in the ledger: twice as many rows drawn, those that match shuffled."""
        (total,) = self._db.execute("SELECT max(rowid) FROM expected").fetchone()
        if not total or n <= 0:
            return []
        picks = random.sample(range(1, total + 1), min(total, 2 * n))
        marks = ",".join(f":p{i}" for i in range(len(picks)))
        query = (
            f"SELECT {_EXPECTED_COLUMNS} FROM expected e JOIN kv k ON k.name = e.name "  # noqa: S608
            f"WHERE e.rowid IN ({marks}) AND {_MATCH}"
        )
        params = {f"p{i}": p for i, p in enumerate(picks)}
        params |= {"tolerance": tolerance_ms, "floor": floor}
        matching = [Expected(*row) for row in self._db.execute(query, params)]
        random.shuffle(matching)  # SQLite gives them in rowid order: the first n, otherwise
        return matching[:n]

    def not_expected(self, mark: str, floor: int) -> Iterator[str]:
        """Names listed with this migration's ``mark`` that no expected entry has: what it
        wrote that the source no longer holds (deleted from Redis since, a conversation no
        longer owned). Entries that expire within KV's floor (exact expiry, or KV's own:
        ``floor``) are left out: gone or going for every reader, as from Redis, or skipped
        by a re-plan that found under 60 s left (``--short-ttl skip``)."""
        query = (
            "SELECT name FROM kv WHERE mark = ? AND (x IS NULL OR x > ?) "
            "AND (expiration IS NULL OR expiration > ?) AND NOT EXISTS "
            "(SELECT 1 FROM expected e WHERE e.name = kv.name) ORDER BY name"
        )
        for (name,) in self._db.execute(query, (mark, floor * 1000, floor)):
            yield bytes(name).decode("utf-8", "backslashreplace")

    def unexpected(self, low: str, high: bytes | None) -> int:
        """Names listed in [low, high) that no expected entry has (a conversation's
        messages on KV that are not in Redis)."""
        query = "SELECT count(*) FROM kv WHERE name >= ?"
        args: list[Any] = [low.encode("utf-8")]
        if high is not None:
            query += " AND name < ?"
            args.append(high)
        query += " AND NOT EXISTS (SELECT 1 FROM expected e WHERE e.name = kv.name)"
        count: int = self._db.execute(query, args).fetchone()[0]
        return count

    def names(
        self, *, run: str | None = None, mark: str | None = None, prefix: str = ""
    ) -> Iterable[str]:
        """Every listed name (of one run's entries, of one migration's, under ``prefix``),
        in byte order."""
        query = "SELECT name FROM kv WHERE name >= ?"
        args: list[Any] = [prefix.encode("utf-8")]
        if run is not None:
            query += " AND run = ?"
            args.append(run)
        if mark is not None:
            query += " AND mark = ?"
            args.append(mark)
        for (name,) in self._db.execute(query + " ORDER BY name", args):
            text = bytes(name).decode("utf-8")
            if not text.startswith(prefix):
                break
            yield text
