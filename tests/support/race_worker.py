"""One process of the race tests: ``python -m tests.support.race_worker SCENARIO DIR ARG...``.

Opens the store as the bot does (``open_store()`` from the environment) and runs one
operation of SCENARIO, stopping once at its pause point: it creates ``DIR/paused`` and
waits for ``DIR/go``. The test runs another process's operation exactly there (a slow
process, without sleeps in the test), then lets this one finish. What the operation
answered is written to ``DIR/answer`` (and a session id it issued to ``DIR/new-id``).

Scenarios:

* ``trim CID MAX``: ``ConversationStore.trim`` with ``max_messages=MAX``, paused after it
  listed the conversation;
* ``refresh SID``: ``SessionStore.get`` of a session whose lifetime runs low (this process's
  clock is 400 s ahead), paused before the refresh is written;
* ``update SID``: ``SessionStore.update`` with ``{"by": "update"}``, paused before it writes;
* ``regenerate SID``: ``SessionStore.regenerate``, paused before it writes the new id.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from brainbot.composition import open_store
from brainbot.storage.conversations import ConversationStore
from brainbot.storage.sessions import SessionStore

PAUSE_DEADLINE = 60.0  # the test lets us go long before this


async def pause(where: Path) -> None:
    """Say we are at the pause point; wait until the test says go (once)."""
    if (where / "paused").exists():
        return
    (where / "paused").touch()
    deadline = time.monotonic() + PAUSE_DEADLINE
    while not (where / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("never told to go on")
        await asyncio.sleep(0.01)


def paused_after(fn: Callable[..., Awaitable[Any]], where: Path) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        answer = await fn(*args, **kwargs)
        await pause(where)
        return answer

    return call


def paused_before(fn: Callable[..., Awaitable[Any]], where: Path) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        await pause(where)
        return await fn(*args, **kwargs)

    return call


async def main(scenario: str, where: Path, args: list[str]) -> None:
    async with open_store() as store:
        answer: object
        if scenario == "trim":
            conversations = ConversationStore(store, max_messages=int(args[1]), trim_every=10**9)
            layout: Any = conversations._primary
            layout.index = paused_after(layout.index, where)
            answer = await conversations.trim(args[0])
        elif scenario in ("refresh", "update", "regenerate"):
            sessions = SessionStore(store, lifetime=600, clock=lambda: time.time() + 400)
            store.set = paused_before(store.set, where)  # type: ignore[method-assign]
            new_id = sessions._new_id

            def recorded() -> str:  # the test looks the new id up
                (where / "new-id").write_text(issued := new_id())
                return issued

            sessions._new_id = recorded  # type: ignore[method-assign]
            try:
                if scenario == "refresh":
                    answer = await sessions.get(args[0])
                elif scenario == "update":
                    answer = await sessions.update(args[0], {"by": "update"})
                else:
                    answer = await sessions.regenerate(args[0])
            except LookupError as exc:  # SessionNotFound
                answer = type(exc).__name__
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    (where / "answer").write_text(repr(answer))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
