"""Where replies come from. The default is deterministic and local (no network), so the
service runs end to end anywhere; a real model plugs in through ``BRAINBOT_RESPONDER``
(``"package.module:attribute"``, a class or factory returning a :class:`Responder`)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from brainbot.storage.conversations import Message


@runtime_checkable
class Responder(Protocol):
    async def reply(self, history: Sequence[Message], message: str) -> str: ...


class EchoResponder:
    """Repeats the message with the turn number: deterministic, for tests and demos."""

    async def reply(self, history: Sequence[Message], message: str) -> str:
        turn = sum(1 for m in history if m.role == "user")
        return f"brainbot heard: {message} (turn {turn})"


def load_responder(spec: str | None) -> Responder:
    if not spec:
        return EchoResponder()
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"BRAINBOT_RESPONDER must look like 'module:attribute', not {spec!r}.")
    target = getattr(importlib.import_module(module_name), attribute)
    responder = target() if isinstance(target, type) or not hasattr(target, "reply") else target
    if not isinstance(responder, Responder):
        raise ValueError(f"{spec} does not provide an async reply(history, message).")
    return responder
