"""What every ``brainbot`` command shares: settings built once, errors mapped by branch.

Exit codes: 0 done, 1 the service or the run failed (after retries; also a local file that
cannot be written), 2 bad input or configuration, 3 not found. Messages name the problem,
never a credential.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from brainbot.composition import load_settings
from brainbot.config import Settings
from brainbot.errors import BrainbotError, ConfigError, InvalidInput, KVError, NotFound

T = TypeVar("T")
err = Console(stderr=True, highlight=False, emoji=False)  # ":soon:" in a key name stays text


SECRET_FILE_MAX_BYTES = 4096


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def describe(exc: BrainbotError) -> str:
    if isinstance(exc, ConfigError):
        return f"configuration: {exc}"
    if isinstance(exc, KVError) and isinstance(exc, InvalidInput):
        return exc.message
    return str(exc)


@contextmanager
def handled() -> Iterator[None]:
    """brainbot's errors become a message and an exit code, by branch; each message made
    safe (``safe_name``), since they may quote key names, paths and URLs."""
    try:
        yield
    except InvalidInput as exc:
        fail(safe_name(describe(exc)), 2)
    except NotFound as exc:
        fail(safe_name(describe(exc)), 3)
    except BrainbotError as exc:
        fail(safe_name(describe(exc)), 1)
    except OSError as exc:  # a run directory, a backup file: name the file, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        fail(safe_name(f"{exc.strerror or type(exc).__name__}{where}"), 1)


def settings() -> Settings:
    """The command's one ``Settings`` (invalid settings: exit 2)."""
    with handled():
        return load_settings()
    raise AssertionError("unreachable")  # pragma: no cover


def run(work: Coroutine[Any, Any, T]) -> T:
    with handled():
        return asyncio.run(work)
    raise AssertionError("unreachable")  # pragma: no cover


_SHORT_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def safe_name(text: str) -> str:
    """``text`` (a key name, a URL, a run id, a message quoting them) fit for one console
    line in Rich markup: ``printable(text)``, then Rich markup escaped, so ``[/x]`` prints
    as itself."""
    return escape(printable(text))


def printable(text: str) -> str:
    """``text`` fit for one line of plain output: each control or non-printable character
    (``str.isprintable()``: terminal escapes, bidi overrides, line breaks, tabs, odd spaces,
    lone surrogates) shown as a Python escape (``\\x1b``, ``\\n``, ``\\u202e``), a backslash
    doubled so the escapes stay unambiguous."""
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def read_secret_file(path: str, option: str) -> str:
    """The secret (a password, a token) in ``path``, given with ``option``: one line (a final
    newline is dropped), in a regular file that neither group nor others may read. Never
    echoed: messages name the file, not its content."""
    shown = safe_name(path)
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                fail(f"{option} {shown} is not a regular file.", 2)
            if mode & 0o044:
                fail(
                    f"{option} {shown} is readable by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}): run chmod 600 on it.",
                    2,
                )
            data = file.read(SECRET_FILE_MAX_BYTES + 1)
    except OSError as exc:
        fail(f"cannot read {option} {shown}: {safe_name(exc.strerror or type(exc).__name__)}", 2)
    if len(data) > SECRET_FILE_MAX_BYTES:
        fail(f"{option} {shown} is over {SECRET_FILE_MAX_BYTES} bytes: not a secret.", 2)
    try:
        secret = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        fail(f"{option} {shown} is not UTF-8 text.", 2)
    if not secret:
        fail(f"{option} {shown} is empty.", 2)
    return secret
