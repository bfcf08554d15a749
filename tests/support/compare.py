"""Running one command on redis-py and on KVStore the same way, for tests that compare
their answers: the answer, or the kind of error (with Redis's message for error replies;
``DataError`` by kind only, the class names differ by library)."""

from __future__ import annotations

from typing import Any

import redis.exceptions

from brainbot.storage import errors


async def outcome(store: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``("ok", answer)`` (an ``*_iter`` command's items as a list), ``("ResponseError",
    message)`` or ``("DataError",)``."""
    try:
        call = getattr(store, name)(*args, **kwargs)
        result = [x async for x in call] if name.endswith("_iter") else await call
    except (redis.exceptions.ResponseError, errors.ResponseError) as exc:
        return ("ResponseError", str(exc))
    except (redis.exceptions.DataError, errors.DataError):
        return ("DataError",)
    return ("ok", result)
