"""Two OS processes, one stopped at the worst moment of its operation while the other runs
(``tests/support/race_worker.py``): on the embedded KV shared by both, and through the
gateway Worker in Miniflare. No sleeps decide the order: the paused process waits for a
file the test creates once the other operation returned.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from brainbot.composition import load_settings, open_store
from brainbot.storage import Store
from brainbot.storage.conversations import ConversationStore, Message
from brainbot.storage.sessions import SessionStore
from tests.support.processes import PYTHONPATH, ROOT, Service


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "BRAINBOT_"))}
    return {**env, "PYTHONPATH": PYTHONPATH, **extra}


@pytest.fixture(params=["embedded", "gateway"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The settings of a backend the docs call safe for several processes."""
    settings = {"BRAINBOT_DATA_DIR": str(tmp_path / "data")}
    if request.param == "gateway":
        gateway: Service = request.getfixturevalue("gateway")
        settings["BRAINBOT_KV_GATEWAY_URL"] = gateway.url
        settings["BRAINBOT_KV_GATEWAY_SECRET"] = request.getfixturevalue("gateway_secret")
        settings["BRAINBOT_KV_PREFIX"] = f"race-{time.monotonic_ns()}:"
    return settings


def race(
    settings: dict[str, str],
    tmp: Path,
    scenario: str,
    args: list[str],
    meanwhile: Callable[[Store], Awaitable[None]],
) -> str:
    """Run ``scenario`` in a worker process; at its pause point run ``meanwhile`` here (on
    a store of this process); let the worker finish. The worker's answer, as repr."""
    where = tmp / f"race-{time.monotonic_ns()}"
    where.mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.race_worker", scenario, str(where), *args],
        env=clean_env(**settings),
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        while not (where / "paused").exists():
            if worker.poll() is not None:
                raise AssertionError(f"worker ended early: {worker.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.01)

        async def other() -> None:
            async with open_store(load_settings(**settings)) as store:
                await meanwhile(store)

        asyncio.run(other())
        (where / "go").touch()
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return (where / "answer").read_text()


def in_store(settings: dict[str, str], work: Callable[[Store], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with open_store(load_settings(**settings)) as store:
            return await work(store)

    return asyncio.run(run())


# -- conversations -------------------------------------------------------------------------


def test_a_trim_never_deletes_a_message_another_process_appended_meanwhile(
    backend: dict[str, str], tmp_path: Path
) -> None:
    """Before: the trim listed the conversation twice (what to keep, then what there is)
    and deleted what the second listing had beyond the first's keep list: a message
    another process appended in between, the newest of all, was deleted at once."""

    async def fill(store: Store) -> None:
        conversations = ConversationStore(store)
        for i in range(5):
            await conversations.append("c", Message("user", f"old {i}"))

    in_store(backend, fill)

    async def append(store: Store) -> None:
        await ConversationStore(store).append("c", Message("user", "new"))

    race(backend, tmp_path, "trim", ["c", "3"], append)

    async def contents(store: Store) -> list[str]:
        return [m.content for m in await ConversationStore(store).history("c", limit=100)]

    assert in_store(backend, contents)[-1] == "new"


# -- sessions ------------------------------------------------------------------------------


def make_session(settings: dict[str, str]) -> str:
    async def create(store: Store) -> str:
        return (await SessionStore(store, lifetime=600).create({"by": "create"})).id

    sid: str = in_store(settings, create)
    return sid


def read_session(settings: dict[str, str], sid: str) -> dict[str, Any] | None:
    async def read(store: Store) -> dict[str, Any] | None:
        raw = await store.get(SessionStore(store).prefix + _digest(sid))
        return None if raw is None else json.loads(raw)["data"]

    found: dict[str, Any] | None = in_store(settings, read)
    return found


def _digest(sid: str) -> str:
    import hashlib

    return hashlib.sha256(sid.encode()).hexdigest()


@pytest.mark.parametrize("scenario", ["refresh", "update", "regenerate"])
def test_a_deleted_session_stays_deleted_whatever_another_process_was_writing(
    backend: dict[str, str], tmp_path: Path, scenario: str
) -> None:
    """Before: a refresh (a mere read whose lifetime ran low) or an update that had read
    the session before another process deleted it (a logout) wrote it back: the session
    was alive again, with its whole lifetime; a regenerate left its data alive under the
    new id."""
    sid = make_session(backend)

    async def logout(store: Store) -> None:
        assert await SessionStore(store).delete(sid)

    answer = race(backend, tmp_path, scenario, [sid], logout)
    assert answer in ("None", "'SessionNotFound'")
    assert read_session(backend, sid) is None
    issued = list(tmp_path.glob("race-*/new-id"))
    assert all(read_session(backend, path.read_text()) is None for path in issued)
