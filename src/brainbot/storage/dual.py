"""``DualStore``: the cut-over mode. Writes go to KV and to Redis; reads come from KV and
are compared with Redis in the background, mismatches counted and logged.

While it runs, Redis keeps receiving every write, so switching back
(``BRAINBOT_STORAGE_BACKEND=redis``) loses nothing written during the cut-over. A write
that fails on Redis fails the call (after KV took it): a silent gap in the rollback copy
would defeat the point of the mode. Logs name the command and key, never values.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("brainbot.storage.dual")

WRITES = frozenset(
    (
        "set",
        "setnx",
        "getdel",
        "mset",
        "delete",
        "incr",
        "incrby",
        "decr",
        "decrby",
        "incrbyfloat",
        "append",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "persist",
        "lpush",
        "rpush",
        "lpop",
        "rpop",
        "ltrim",
        "lrem",
        "lset",
        "hset",
        "hdel",
        "hincrby",
        "sadd",
        "srem",
        "zadd",
        "zrem",
        "rename",
        "flushdb",
    )
)
READS = frozenset(
    (
        "get",
        "mget",
        "exists",
        "strlen",
        "ttl",
        "pttl",
        "lrange",
        "lindex",
        "llen",
        "hget",
        "hmget",
        "hgetall",
        "hexists",
        "hkeys",
        "hvals",
        "hlen",
        "smembers",
        "sismember",
        "scard",
        "zrange",
        "zscore",
        "zcard",
        "type",
        "keys",
    )
)
_UNORDERED = frozenset({"hkeys", "hvals", "keys"})
_TOLERANCE = {"ttl": 1, "pttl": 1000}


def same(command: str, kv: Any, redis: Any) -> bool:
    """Whether two answers agree, allowing for what Redis leaves unordered or imprecise."""
    if command in _UNORDERED and isinstance(kv, list) and isinstance(redis, list):
        return sorted(kv) == sorted(redis)
    if command in _TOLERANCE and isinstance(kv, int) and isinstance(redis, int):
        return kv == redis or (kv >= 0 and redis >= 0 and abs(kv - redis) <= _TOLERANCE[command])
    return bool(kv == redis)


class DualStore:
    """Same methods as ``KVStore``; KV is the primary, Redis the shadow kept complete."""

    def __init__(self, kv: Any, redis: Any) -> None:
        self.kv = kv
        self.redis = redis
        self.mismatches: Counter[str] = Counter()
        self.compared = 0
        self._checks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"DualStore(kv={self.kv!r}, redis=<redis>)"

    async def __aenter__(self) -> DualStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def drain(self) -> None:
        """Wait for the background comparisons started so far."""
        while self._checks:
            await asyncio.gather(*self._checks)

    async def aclose(self) -> None:
        await self.drain()
        await self.kv.aclose()
        await self.redis.aclose()

    def scan_iter(self, *args: Any, **kwargs: Any) -> Any:
        return self.kv.scan_iter(*args, **kwargs)

    def __getattr__(self, command: str) -> Callable[..., Awaitable[Any]]:
        if command not in WRITES and command not in READS:
            raise AttributeError(command)
        on_kv, on_redis = getattr(self.kv, command), getattr(self.redis, command)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await on_kv(*args, **kwargs)
            if command in WRITES:
                shadow = await on_redis(*args, **kwargs)  # must land: it is the way back
                self._compare(command, args, result, shadow)
            else:
                self._schedule(command, args, kwargs, result, on_redis)
            return result

        return call

    def _schedule(
        self,
        command: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        on_redis: Callable[..., Awaitable[Any]],
    ) -> None:
        async def check() -> None:
            try:
                self._compare(command, args, result, await on_redis(*args, **kwargs))
            except Exception as exc:  # the hot path already answered; only count it
                self.mismatches[f"{command}:error"] += 1
                log.warning("dual read check of %s failed: %s", command, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _compare(self, command: str, args: tuple[Any, ...], kv: Any, redis: Any) -> None:
        self.compared += 1
        if not same(command, kv, redis):
            self.mismatches[command] += 1
            key = args[0] if args else ""
            log.warning("dual mismatch: %s %r differs between KV and Redis", command, key)
