"""Responders for tests (loaded through BRAINBOT_RESPONDER)."""

from __future__ import annotations

from collections.abc import Sequence

from brainbot.storage.conversations import Message


class Failing:
    async def reply(self, history: Sequence[Message], message: str) -> str:
        raise RuntimeError("the model is down")


class Verbose:
    """A reply over the service's 32 KiB message limit."""

    async def reply(self, history: Sequence[Message], message: str) -> str:
        return "blah " * 10_000
