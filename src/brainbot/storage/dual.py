"""``DualStore``: the cut-over mode. Writes go to KV and to Redis; reads come from KV and
are compared with Redis in the background, mismatches counted and logged.

While it runs, Redis keeps receiving every write, so switching back
(``BRAINBOT_STORAGE_BACKEND=redis``) loses nothing written during the cut-over.

* Routing is derived from ``KVStore``'s own declarations (each command says once whether it
  reads or writes, and which arguments are keys): a command added to ``KVStore`` is routed
  here without a line changing (``tests/storage/test_routing.py`` checks every one).
* Writes to one key go to KV and then Redis under one per-key lock, so concurrent writers
  land in the same order on both sides.
* A write that fails on Redis fails the call, after KV took it: a silent gap in the rollback
  copy would defeat the point of the mode. Such writes are counted (``shadow_failures``) and
  logged by key; a caller that retries a non-idempotent command
  (INCR, RPUSH) applies it twice on KV, so reconcile those keys before switching back.
* A read is compared with Redis in the background only if no write to that key happened in
  between (otherwise the two answers are of different moments, not a mismatch).
* ``flushdb`` deletes on Redis exactly the keys it deletes on KV, never the whole database.
* A command whose answer is KV's own choice (``own``: SPOP, SRANDMEMBER, HRANDFIELD,
  ZRANDMEMBER, RANDOMKEY, SCAN/SSCAN/HSCAN/ZSCAN cursors) is not compared; a write of that
  kind (SPOP) is mirrored to Redis by value: the keys it touched are copied from KV, so
  both sides pop the same members.
* It assumes the Redis database holds brainbot's keys only (``keys`` compares all of it).

Logs name the command and key, never values.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from brainbot.storage.engine import CommandSpec, bind
from brainbot.storage.kv_store import KVStore

log = logging.getLogger("brainbot.storage.dual")

COMMANDS: dict[str, CommandSpec] = KVStore.command_specs()


def same(spec: CommandSpec, kv: Any, redis: Any) -> bool:
    """Whether two answers agree, allowing for what Redis leaves unordered or imprecise."""
    if spec.unordered and isinstance(kv, list) and isinstance(redis, list):
        return sorted(kv) == sorted(redis)
    if spec.tolerance and isinstance(kv, int) and isinstance(redis, int):
        return kv == redis or (kv >= 0 and redis >= 0 and abs(kv - redis) <= spec.tolerance)
    return bool(kv == redis)


def _norm(key: Any) -> bytes:
    return bytes(key) if isinstance(key, bytes | bytearray | memoryview) else str(key).encode()


if TYPE_CHECKING:
    _Commands = KVStore  # every KVStore command is defined on DualStore below
else:
    _Commands = object


class DualStore(_Commands):
    """Same commands as ``KVStore``; KV is the primary, Redis the shadow kept complete."""

    def __init__(self, kv: KVStore, redis: Any) -> None:
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
        return self.kv.decode_responses

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

    async def _flushdb(self, asynchronous: bool = False) -> bool:
        keys = await self.kv.keys("*")
        await self.kv.flushdb()
        for start in range(0, len(keys), 1000):
            await self.redis.delete(*keys[start : start + 1000])
        return True

    async def _mirror(self, keys: builtins.list[bytes]) -> None:
        """Copy ``keys`` from KV to Redis by value (type, data, expiry)."""
        pipe = self.redis.pipeline(transaction=True)
        for key in keys:
            kind = await self.kv.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            pipe.delete(key)
            if kind == "string":
                pipe.set(key, await self.kv.get(key))
            elif kind == "list":
                pipe.rpush(key, *await self.kv.lrange(key, 0, -1))
            elif kind == "hash":
                pipe.hset(key, mapping=await self.kv.hgetall(key))
            elif kind == "set":
                pipe.sadd(key, *await self.kv.smembers(key))
            elif kind == "zset":
                pipe.zadd(key, dict(await self.kv.zrange(key, 0, -1, withscores=True)))
            left = await self.kv.pttl(key) if kind != "none" else -1
            if left > 0:
                pipe.pexpire(key, left)
        await pipe.execute()

    async def _read(self, command: str, spec: CommandSpec, args: Any, kwargs: Any) -> Any:
        if spec.own:  # KV's own choice: nothing to compare it with
            return await getattr(self.kv, command)(*args, **kwargs)
        keys = self._keys(command, spec, args, kwargs)
        seen = [self._generation[k] for k in keys]
        result = await getattr(self.kv, command)(*args, **kwargs)
        self._schedule(command, spec, args, kwargs, result, keys, seen)
        return result

    async def _write(self, command: str, spec: CommandSpec, args: Any, kwargs: Any) -> Any:
        keys = self._keys(command, spec, args, kwargs)
        locks = [self._locks.setdefault(k, asyncio.Lock()) for k in keys]
        for lock in locks:
            await lock.acquire()
        try:
            for k in keys:
                self._generation[k] += 1
            result = await getattr(self.kv, command)(*args, **kwargs)
            try:  # must land: it is the way back
                if spec.own:  # KV chose (SPOP): Redis gets what KV now holds
                    await self._mirror(keys)
                    return result
                shadow = await getattr(self.redis, command)(*args, **kwargs)
            except Exception:
                self.shadow_failures += 1
                log.error("dual: %s %r reached KV but not Redis", command, keys[:1])
                raise
            self._compare(command, spec, keys, result, shadow)
            return result
        finally:
            for lock in reversed(locks):
                lock.release()

    @staticmethod
    def _keys(command: str, spec: CommandSpec, args: Any, kwargs: Any) -> builtins.list[bytes]:
        arguments = bind(getattr(KVStore, command), args, kwargs)
        return sorted({_norm(k) for k in spec.keys_of(arguments)})

    def _schedule(
        self,
        command: str,
        spec: CommandSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        keys: builtins.list[bytes],
        seen: builtins.list[int],
    ) -> None:
        async def check() -> None:
            try:
                shadow = await getattr(self.redis, command)(*args, **kwargs)
                if [self._generation[k] for k in keys] != seen:
                    return  # a write came in between: the answers are of different moments
                self._compare(command, spec, keys, result, shadow)
            except Exception as exc:  # the hot path already answered; only count it
                self.mismatches[f"{command}:error"] += 1
                log.warning("dual read check of %s failed: %s", command, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _compare(
        self, command: str, spec: CommandSpec, keys: builtins.list[bytes], kv: Any, redis: Any
    ) -> None:
        self.compared += 1
        if not same(spec, kv, redis):
            self.mismatches[command] += 1
            log.warning("dual mismatch: %s %r differs between KV and Redis", command, keys[:1])


def _route(command: str, spec: CommandSpec) -> Callable[..., Any]:
    """The DualStore method for one KVStore command, from its declaration."""
    original = getattr(KVStore, command)
    if command in ("flushdb", "flushall"):  # on Redis only the keys deleted on KV
        return DualStore._flushdb
    if inspect.isasyncgenfunction(original):  # scan_iter: KV only, nothing to compare

        def iterate(self: DualStore, *args: Any, **kwargs: Any) -> Any:
            return getattr(self.kv, command)(*args, **kwargs)

        iterate.__doc__ = original.__doc__
        return iterate
    route = DualStore._read if spec.kind == "read" else DualStore._write

    async def call(self: DualStore, *args: Any, **kwargs: Any) -> Any:
        return await route(self, command, spec, args, kwargs)

    call.__name__ = command
    call.__doc__ = original.__doc__
    return call


for _name, _spec in COMMANDS.items():
    setattr(DualStore, _name, _route(_name, _spec))
