"""The Redis backend (``BRAINBOT_STORAGE_BACKEND=redis``, and ``dual``'s shadow): redis-py's
own client, with its connection errors translated where they enter.

Every command answers exactly what redis-py answers. Only the failures change class: a
refused, dropped or timed-out connection raises :class:`~brainbot.errors.RedisUnavailable`,
which is both brainbot's ``Unavailable`` (the service answers 503) and redis-py's
``ConnectionError``/``TimeoutError`` (ported ``except`` clauses still catch it). Pipelines
and other helper objects are redis-py's, untranslated.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from brainbot.errors import RedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis as _Client
else:
    _Client = object


def _translated(exc: BaseException) -> RedisUnavailable | None:
    """Connection trouble, and the replies Redis gives while it cannot serve for now (a
    replica during failover, out of memory, a cluster re-sharding), as ``RedisUnavailable``."""
    from redis import exceptions as rx

    transient = (
        rx.ConnectionError,  # with BusyLoadingError and AuthenticationError (misconfigured)
        rx.TimeoutError,
        rx.ReadOnlyError,
        rx.OutOfMemoryError,
        rx.TryAgainError,
        rx.ClusterDownError,
        rx.MasterDownError,
        OSError,
    )
    if isinstance(exc, RedisUnavailable) or not isinstance(exc, transient):
        return None
    return RedisUnavailable(f"Redis: {type(exc).__name__}: {exc}")


async def _guard(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except Exception as exc:
        translated = _translated(exc)
        if translated is None:
            raise
        raise translated from None


class RedisBackend(_Client):
    """redis-py's asyncio client with its connection errors translated."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        """redis-py's client underneath."""
        return self._client

    def __repr__(self) -> str:
        return "RedisBackend(<redis>)"  # the client's repr may show the URL's password

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or inspect.isasyncgenfunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            return _guard(result) if inspect.isawaitable(result) else result

        return call

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self._client.aclose(close_connection_pool)

    async def __aenter__(self) -> RedisBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def wrap(client: Any) -> RedisBackend:
    """``client`` (redis-py's asyncio client) as a store of ours."""
    return client if isinstance(client, RedisBackend) else RedisBackend(client)


__all__ = ["RedisBackend", "wrap"]
