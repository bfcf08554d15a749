"""Start real services (redis-server, `brainbot kv serve`, Miniflare) for tests.

Each runs in its own process group, so stopping it also stops what it spawned
(Miniflare's workerd), and each announces readiness on stdout before tests use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
"""For child processes: this tree's code (not whatever the editable install points at, a
worktree's tests ran main's code), and ``tests.support`` (responders)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    log: list[str]
    """Every line of its output (stdout and stderr), read as it comes; all of it once
    :meth:`stop` returns."""
    reader: threading.Thread | None = None

    def stop(self) -> None:
        stop_group(self.process)
        if self.reader is not None:
            self.reader.join(timeout=10)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def start_service(
    cmd: list[str],
    ready: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    preexec_fn: Callable[[], object] | None = None,
) -> Service:
    """Run ``cmd`` in a new process group and wait for a stdout line matching ``ready``.

    The first group of the pattern, if any, becomes the service's url."""
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    assert process.stdout is not None
    pattern = re.compile(ready)
    log: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.2):
                if process.poll() is not None:
                    break
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            lines, buffer = _split(buffer + chunk)
            for n, line in enumerate(lines):
                log.append(line)
                match = pattern.search(line)
                if match:
                    log.extend(lines[n + 1 :])
                    reader = threading.Thread(
                        target=_keep_reading, args=(process, buffer, log), daemon=True
                    )
                    reader.start()
                    url = match.group(1) if match.groups() else ""
                    return Service(process, url, log, reader)
    finally:
        selector.close()
    stop_group(process)
    raise RuntimeError(f"{cmd[0]} did not become ready; output:\n" + "\n".join(log))


def _keep_reading(process: subprocess.Popen[bytes], buffer: bytes, log: list[str]) -> None:
    """The service's output, line by line into ``log`` until it exits: a pipe nobody
    reads fills at 64 KiB and then blocks the service at its next log line."""
    assert process.stdout is not None
    with contextlib.suppress(OSError):
        while chunk := os.read(process.stdout.fileno(), 65536):
            lines, buffer = _split(buffer + chunk)
            log.extend(lines)
    if buffer:
        log.append(buffer.decode("utf-8", "replace"))


def _split(buffer: bytes) -> tuple[list[str], bytes]:
    """The whole lines in ``buffer``, and what is left of it."""
    *whole, rest = buffer.split(b"\n")
    return [line.decode("utf-8", "replace") for line in whole], rest


def start_redis(workdir: Path) -> tuple[Service, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run ./scripts/setup")
    port = free_port()
    service = start_service(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
        ],
        r"Ready to accept connections",
    )
    return service, port


TEST_ACCOUNT = "test-account"


def start_kv_server(
    data_dir: Path, token: str, *args: str, auto_create: bool = True, account: str = TEST_ACCOUNT
) -> Service:
    """``brainbot kv serve`` for tests: by default it creates a namespace on first use, so
    each test may take a fresh id (tests of Cloudflare's 10013 pass ``auto_create=False``)."""
    extra = ["--account", account, *(["--auto-create-namespaces"] if auto_create else [])]
    return start_service(
        [
            sys.executable,
            "-m",
            "brainbot",
            "kv",
            "serve",
            "--port",
            "0",
            "--data",
            str(data_dir),
            *extra,
            *args,
        ],
        r"^READY (\S+) account=",
        env={"BRAINBOT_KV_SERVE_TOKEN": token},
    )
