"""A migration run's files, in ``<runs>/<run id>/``, each created 0600 in a 0700 directory:

* ``state.json``       the checkpoint (written first, then replaced atomically, fsync'd);
* ``backup.jsonl.gz``  every migrated key as Redis held it (gzip members, appended);
* ``kv-backup.jsonl.gz`` the KV values the run replaced (the bot's, with ``--overwrite``;
                       an earlier run's entries it rewrote);
* ``undone-<ms>.jsonl`` the keys a rollback of the run deleted (one file a rollback);
* ``manifest.jsonl``   what the run wrote: per Redis key, its KV entries and digests;
* ``owners.jsonl``     the legacy owner claims read so far;
* ``report.json``, ``verify.json``;

and beside the runs, ``<mark>.lock``: held (flock) by the one process working on a run of
that migration.

Run ids look like ``20261127T120000Z-1a2b3c``; :func:`run_dir` accepts only such an id of a
run under ``runs`` (no path of any other shape is ever opened from a run id).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import gzip
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from brainbot.errors import BrainbotError, RollbackError

RUN_ID = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\Z")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def run_tag(run_id: str) -> str:
    """The short tag a run's entries carry in their metadata (``r``)."""
    return run_id.rsplit("-", 1)[-1]


def run_dir(runs: Path, run_id: str) -> Path:
    """The directory of run ``run_id`` under ``runs``: the id must be a run id, and the run
    must exist there with a state file that names it."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise RollbackError(f"{run_id!r} is not a migration run id (like 20261127T120000Z-1a2b3c).")
    path = runs / run_id
    state = path / "state.json"
    if not state.is_file() or state.is_symlink():
        raise RollbackError(f"No migration run {run_id} under {runs}.")
    if read_json(state).get("run_id") != run_id:
        raise RollbackError(f"The state file under {run_id} names another run.")
    return path


MARK = re.compile(r"\A[0-9a-f]{8}\Z")


@contextlib.contextmanager
def exclusive(runs: Path, mark: str, error: type[BrainbotError]) -> Iterator[None]:
    """Hold the migration's lock (``<runs>/<mark>.lock``) while working on any of its runs:
    one migrate, resume or rollback of a migration at a time. Two at once would decide
    from views of KV and of each other's records that the other is changing (a resume
    writing a stale state, two fresh runs each counting the other's entries as its own,
    a rollback deleting what a run under way took as written). The lock is the kernel's
    (flock): a killed process leaves none behind."""
    if not MARK.match(mark):
        raise error(f"Not a migration mark: {mark!r}.")
    runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(runs / f"{mark}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(
                f"Migration {mark} is in use by another brainbot process (a migrate, "
                "--resume or rollback of one of its runs): wait for that to end."
            ) from None
        yield
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(path.read_bytes())
    return loaded


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600, fsync'd), so a crash leaves old or new."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, orjson.dumps(value, option=orjson.OPT_INDENT_2))


def append(path: Path, lines: Iterable[bytes], *, compressed: bool = False) -> None:
    """Append lines (0600, fsync'd); compressed files get one gzip member per call."""
    data = b"".join(line + b"\n" for line in lines)
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "ab") as out:
        out.write(gzip.compress(data, compresslevel=1) if compressed else data)
        out.flush()
        os.fsync(out.fileno())


def lines(path: Path, *, compressed: bool = False) -> Iterator[Any]:
    """The JSON lines of ``path`` (none if it does not exist)."""
    if not path.exists():
        return
    with gzip.open(path, "rb") if compressed else path.open("rb") as stream:
        for line in stream:
            if line.strip():
                yield orjson.loads(line)


def b64(data: bytes) -> str:
    # what base64.b64encode calls, without its Python frame (backup lines: per element)
    return binascii.b2a_base64(data, newline=False).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)
