"""``KVStore``: the Redis operations brainbot uses, on a Workers KV namespace.

Method names, arguments and return values follow ``redis.asyncio.Redis``, so code ports by
changing its import. Each Redis key is one KV entry (``storage/codec.py``): the value holds
the data, the metadata holds the Redis type and the exact expiry. The commands live in one
mixin per family (``storage/commands/``) over a small engine (``storage/engine.py``). How
each Redis behaviour maps onto KV's rules (docs/storage.md has the full table):

* **TTL.** KV cannot expire a key sooner than 60 s. The exact expiry is kept in metadata
  and enforced on every read, so ``ttl``/``pttl``/``get`` behave as in Redis; the KV entry
  itself is kept for at least 60 s (``short_ttl="clamp"``, the default) or a short TTL is
  refused (``"reject"``).
* **Atomicity.** KV has no compare-and-swap. On a coordinated namespace (the embedded KV:
  SQLite transactions; the gateway: its Durable Object) read-modify-writes (incr, lpush,
  hset, rename, ...) are transactions, atomic across every process and instance. On the
  REST client alone they take a per-key lock of this process: across processes the last
  writer wins (``composition.open_store`` refuses that setup for live traffic).
* **1 write per second per key.** Writes to one key are spaced ``write_interval`` apart
  (by default what the namespace asks for: 1 s through REST; none on the embedded KV, and
  none through the gateway, whose Durable Object coalesces KV's writes itself): the next
  one waits (``write_rate="wait"``) or raises ``WriteRateExceeded`` (``"error"``).
* **Eventual consistency.** On a namespace that is eventually consistent, keys this
  process wrote in the last ``recent_window`` seconds (default 60) are answered from
  memory (:class:`~brainbot.kv.overlay.ReadYourWrites`), so a process always reads its own
  writes, also in ``scan``; writes of other processes may take 60 s or more to show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Self

from brainbot.kv.namespace import KVNamespace, coordinator_of
from brainbot.kv.overlay import ReadYourWrites
from brainbot.storage.commands import (
    ExpiryCommands,
    HashCommands,
    KeyspaceCommands,
    ListCommands,
    SetCommands,
    SortedSetCommands,
    StringCommands,
)
from brainbot.storage.commands.args import literal_prefix, redis_glob
from brainbot.storage.engine import CommandSpec, Engine, commands

__all__ = ["KVStore", "literal_prefix", "redis_glob"]


class KVStore(
    StringCommands,
    ExpiryCommands,
    KeyspaceCommands,
    ListCommands,
    HashCommands,
    SetCommands,
    SortedSetCommands,
):
    """Redis operations on one KV namespace (keys optionally under ``prefix``).

    ``write_interval`` and ``recent_window`` default to what the namespace states about
    itself (:attr:`KVNamespace.consistency`): 1 s and 60 s on Cloudflare (REST or gateway),
    0 and 0 on the strongly consistent embedded KV."""

    def __init__(
        self,
        namespace: KVNamespace,
        *,
        prefix: str = "",
        decode_responses: bool = False,
        encoding: str = "utf-8",
        encoding_errors: str = "strict",
        short_ttl: Literal["clamp", "reject"] = "clamp",
        write_interval: float | None = None,
        write_rate: Literal["wait", "error"] = "wait",
        recent_window: float | None = None,
        recent_max: int = 10_000,
        recent_max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        consistency = namespace.consistency
        if isinstance(namespace, ReadYourWrites):
            if recent_window is None or recent_window == namespace.window:
                recent_window = namespace.window  # already wrapped as asked: share it
            else:
                namespace = namespace.inner  # another window was asked for: wrap anew
        if recent_window is None:
            recent_window = 60.0 if consistency.eventual else 0.0
        if recent_window > 0 and not isinstance(namespace, ReadYourWrites):
            namespace = ReadYourWrites(
                namespace,
                recent_window,
                max_keys=recent_max,
                max_bytes=recent_max_bytes,
                clock=clock,
            )
        self._engine = Engine(
            namespace,
            prefix=prefix,
            decode_responses=decode_responses,
            encoding=encoding,
            encoding_errors=encoding_errors,
            short_ttl=short_ttl,
            write_interval=(
                (0.0 if coordinator_of(namespace) else consistency.key_write_interval)
                if write_interval is None
                else write_interval
            ),
            write_rate=write_rate,
            clock=clock,
            sleep=sleep,
        )

    @classmethod
    def command_specs(cls) -> dict[str, CommandSpec]:
        """Every command with its declaration (read or write, and which arguments are keys)."""
        return commands(cls)

    @property
    def namespace(self) -> KVNamespace:
        """The namespace the commands run on (wrapped for read-your-writes when it lags)."""
        return self._engine.namespace

    @property
    def prefix(self) -> str:
        return self._engine.prefix

    @property
    def decode_responses(self) -> bool:
        return self._engine.decode_responses

    @property
    def write_interval(self) -> float:
        return self._engine.write_interval

    @property
    def recent_window(self) -> float:
        """Seconds this store answers its own writes from memory (0: it does not)."""
        namespace = self._engine.namespace
        return namespace.window if isinstance(namespace, ReadYourWrites) else 0.0

    def __repr__(self) -> str:
        return f"KVStore({self.namespace!r}, prefix={self.prefix!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._engine.namespace.aclose()
