"""What KV holds, by name, from a listing: the migration's local view of the namespace.

Every entry the migration writes carries in its metadata a stamp: the migration's mark,
the run's tag and a digest of its value (``transform.stamp_of``). A listing returns metadata with
the names, 1,000 a request, without values, so one pass over the namespace tells for
every key whether it is absent, still exactly what a run of this migration wrote, or
something else (the bot wrote it since). The ledger keeps that in a SQLite file of the run
(on disk, so a namespace of millions of keys costs no memory) for the run, ``verify`` and
``rollback`` to look keys up in batches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainbot.kv.namespace import KVNamespace
from brainbot.migration.transform import stamp_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    name BLOB PRIMARY KEY, mark TEXT, run TEXT, digest TEXT, expiration INTEGER, meta TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS earlier (name BLOB PRIMARY KEY) WITHOUT ROWID;
"""
_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Seen:
    """A key as the listing showed it."""

    mark: str | None
    run: str | None
    digest: str | None
    expiration: int | None
    metadata: Any


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = 0
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
        import orjson

        cursor: str | None = None
        while True:
            page = await namespace.list(prefix=prefix, cursor=cursor, limit=1000)
            rows = []
            for info in page.keys:
                stamp = stamp_of(info.metadata)
                rows.append(
                    (
                        info.name.encode("utf-8"),
                        stamp.mark if stamp else None,
                        stamp.run if stamp else None,
                        stamp.digest if stamp else None,
                        info.expiration,
                        None if info.metadata is None else orjson.dumps(info.metadata).decode(),
                    )
                )
            if rows:  # one transaction a page (not one a row)
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)", rows
                    )
                self.entries += len(rows)
            if page.cursor is None:
                return self.entries
            cursor = page.cursor

    def remember(self, names: Iterable[str]) -> None:
        """Note the names earlier runs of this migration wrote (from their manifests)."""
        rows = ((name.encode("utf-8"),) for name in names)
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO earlier VALUES (?)", rows)

    def written_before(self, names: Sequence[str]) -> set[str]:
        """Those of ``names`` an earlier run wrote."""
        found: set[str] = set()
        raws = [n.encode("utf-8") for n in names]
        for start in range(0, len(raws), _LOOKUP_CHUNK):
            chunk = raws[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT name FROM earlier WHERE name IN ({marks})"  # noqa: S608
            found.update(bytes(name).decode("utf-8") for (name,) in self._db.execute(query, chunk))
        return found

    def lookup(self, names: Sequence[str]) -> dict[str, Seen]:
        """The listed state of those of ``names`` KV holds (absent names are left out)."""
        import orjson

        found: dict[str, Seen] = {}
        if not self.entries:
            return found
        raws = [n.encode("utf-8") for n in names]
        for start in range(0, len(raws), _LOOKUP_CHUNK):
            chunk = raws[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for name, mark, run, digest, expiration, meta in self._db.execute(
                f"SELECT name, mark, run, digest, expiration, meta FROM kv WHERE name IN ({marks})",  # noqa: S608
                chunk,
            ):
                found[bytes(name).decode("utf-8")] = Seen(
                    mark, run, digest, expiration, None if meta is None else orjson.loads(meta)
                )
        return found

    def names(self, *, run: str | None = None, prefix: str = "") -> Iterable[str]:
        """Every listed name (of one run's entries, under ``prefix``), in byte order."""
        query = "SELECT name FROM kv WHERE name >= ?"
        args: list[Any] = [prefix.encode("utf-8")]
        if run is not None:
            query += " AND run = ?"
            args.append(run)
        for (name,) in self._db.execute(query + " ORDER BY name", args):
            text = bytes(name).decode("utf-8")
            if not text.startswith(prefix):
                break
            yield text
