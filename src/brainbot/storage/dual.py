"""``DualStore``: the cut-over mode. Writes go to KV and to Redis; reads come from KV and
are compared with Redis in the background, mismatches counted and logged.

While it runs, Redis keeps receiving every write, so switching back
(``BRAINBOT_STORAGE_BACKEND=redis``) loses nothing written during the cut-over.

* Writes to one key go to KV and then Redis under one per-key lock, so concurrent writers
  land in the same order on both sides.
* A write that fails on Redis fails the call, after KV took it: a silent gap in the rollback
  copy would defeat the point of the mode. Such writes are counted (``shadow_failures``) and
  logged by key; a caller that retries a non-idempotent command (INCR, RPUSH) applies it
  twice on KV, so reconcile those keys before switching back.
* A read is compared with Redis in the background only if no write to that key happened in
  between (otherwise the two answers are of different moments, not a mismatch).
* ``flushdb`` deletes on Redis exactly the keys it deletes on KV, never the whole database.
* It assumes the Redis database holds brainbot's keys only (``keys`` compares all of it).

Logs name the command and key, never values.
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


def _keys_of(command: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The keys a command touches (for the per-key lock and the write generations)."""
    if command == "mset":
        mapping = args[0] if args else kwargs.get("mapping", {})
        return list(mapping)
    if command in ("delete", "exists"):
        return list(args)
    if command == "rename":
        return list(args[:2])
    if command == "mget":
        first = args[0] if args else kwargs.get("keys", [])
        return [first, *args[1:]] if isinstance(first, str | bytes) else [*first, *args[1:]]
    if command == "keys":
        return []
    return list(args[:1]) or [kwargs.get("name")]


def _norm(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class DualStore:
    """Same methods as ``KVStore``; KV is the primary, Redis the shadow kept complete."""

    def __init__(self, kv: Any, redis: Any) -> None:
        self.kv = kv
        self.redis = redis
        self.mismatches: Counter[str] = Counter()
        self.compared = 0
        self.shadow_failures = 0
        self._checks: set[asyncio.Task[None]] = set()
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._generation: Counter[bytes] = Counter()

    @property
    def decode_responses(self) -> bool:
        return bool(self.kv.decode_responses)

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

    async def flushdb(self, asynchronous: bool = False) -> bool:
        keys = await self.kv.keys("*")
        await self.kv.flushdb()
        for start in range(0, len(keys), 1000):
            await self.redis.delete(*keys[start : start + 1000])
        return True

    def __getattr__(self, command: str) -> Callable[..., Awaitable[Any]]:
        if command not in WRITES and command not in READS:
            raise AttributeError(command)
        on_kv, on_redis = getattr(self.kv, command), getattr(self.redis, command)

        async def call(*args: Any, **kwargs: Any) -> Any:
            keys = sorted({_norm(k) for k in _keys_of(command, args, kwargs)})
            if command in READS:
                seen = [self._generation[k] for k in keys]
                result = await on_kv(*args, **kwargs)
                self._schedule(command, args, kwargs, result, on_redis, keys, seen)
                return result
            locks = [self._locks.setdefault(k, asyncio.Lock()) for k in keys]
            for lock in locks:
                await lock.acquire()
            try:
                for k in keys:
                    self._generation[k] += 1
                result = await on_kv(*args, **kwargs)
                try:
                    shadow = await on_redis(*args, **kwargs)  # must land: it is the way back
                except Exception:
                    self.shadow_failures += 1
                    log.error("dual: %s %r reached KV but not Redis", command, args[:1])
                    raise
                self._compare(command, args, result, shadow)
                return result
            finally:
                for lock in reversed(locks):
                    lock.release()

        return call

    def _schedule(
        self,
        command: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        on_redis: Callable[..., Awaitable[Any]],
        keys: list[bytes],
        seen: list[int],
    ) -> None:
        async def check() -> None:
            try:
                shadow = await on_redis(*args, **kwargs)
                if [self._generation[k] for k in keys] != seen:
                    return  # a write came in between: the answers are of different moments
                self._compare(command, args, result, shadow)
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
