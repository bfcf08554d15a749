"""The engine under ``KVStore``'s commands: keys, locks, reads and paced writes on KV.

Every command family (``storage/commands/``) is written against this small execution
protocol and nothing else:

* :meth:`Engine.key` turns a Redis key into its KV name (checked, prefixed);
* :meth:`Engine.read` / :meth:`Engine.read_many` load and decode entries (expired ones
  read as absent; a wrong type raises ``WrongTypeError``);
* :meth:`Engine.update` runs a read-modify-write under the key's lock: the command's
  function gets the current :class:`Item` (or None) and returns a :class:`Change`;
* :meth:`Engine.save` / :meth:`Engine.save_many` / :meth:`Engine.delete_keys` write
  (the caller holds the locks), spaced to KV's one write per second per key.

Each command is declared once as reading or writing (:func:`reads` / :func:`writes`) with
the parameters that hold its keys; ``DualStore`` routes by that declaration.

Read-your-writes is not the engine's business: the namespace may be wrapped in
:class:`~brainbot.kv.overlay.ReadYourWrites`, which answers this process's recent writes.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from brainbot.errors import (
    DataError,
    InvalidKey,
    ResponseError,
    TTLTooShort,
    WriteRateExceeded,
    WrongTypeError,
)
from brainbot.kv.limits import key_bytes
from brainbot.kv.namespace import KeyInfo, KVNamespace, PutItem, iter_keys
from brainbot.kv.overlay import ReadYourWrites
from brainbot.storage import codec
from brainbot.storage.codec import Item, RedisType

KeyT = str | bytes | memoryview
ValueT = bytes | memoryview | str | int | float
Out = Any  # bytes, or str with decode_responses=True (as redis-py)
KV_MIN_TTL_MS = codec.KV_MIN_TTL_MS

F = TypeVar("F", bound=Callable[..., Any])


class Change(NamedTuple):
    """What a read-modify-write does: the command's ``result``, the key's new ``item``
    (None or an empty container deletes it), and whether to ``write`` at all."""

    result: Any
    item: Item | None
    write: bool


# -- declaring commands -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """How a command touches the keyspace, said once where it is defined."""

    kind: Literal["read", "write"]
    keys: tuple[str, ...]
    """Parameters holding key names: a key, an iterable of keys, or a mapping keyed by them."""
    unordered: bool = False
    """Its answer is a list Redis leaves unordered (compare as sorted)."""
    tolerance: int = 0
    """Its integer answer may differ by this much between two backends (TTLs)."""

    def keys_of(self, arguments: Mapping[str, Any]) -> builtins.list[Any]:
        found: builtins.list[Any] = []
        for name in self.keys:
            value = arguments.get(name)
            if value is None:
                continue
            if isinstance(value, str | bytes | memoryview) or not isinstance(value, Iterable):
                found.append(value)  # one key (a bad one is the command's to refuse)
            else:
                found.extend(value)  # several keys, or a mapping keyed by them
        return found


def _declare(spec: CommandSpec) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        fn.__brainbot_command__ = spec  # type: ignore[attr-defined]
        return fn

    return mark


def reads(*keys: str, unordered: bool = False, tolerance: int = 0) -> Callable[[F], F]:
    """Declare a command that only reads the keys in parameters ``keys``."""
    return _declare(CommandSpec("read", keys, unordered, tolerance))


def writes(*keys: str) -> Callable[[F], F]:
    """Declare a command that may write the keys in parameters ``keys``."""
    return _declare(CommandSpec("write", keys))


def commands(cls: type) -> dict[str, CommandSpec]:
    """Every declared command of ``cls`` (its public methods marked reads/writes)."""
    found = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        spec = getattr(getattr(cls, name), "__brainbot_command__", None)
        if isinstance(spec, CommandSpec):
            found[name] = spec
    return found


@functools.cache
def _signature(method: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(method)


def bind(method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The arguments of a call by parameter name (``self`` left out)."""
    return _signature(method).bind(None, *args, **kwargs).arguments


# -- the engine -------------------------------------------------------------------------


class Engine:
    """Reads and writes Redis values on one KV namespace (keys optionally under ``prefix``)."""

    def __init__(
        self,
        namespace: KVNamespace,
        *,
        prefix: str = "",
        decode_responses: bool = False,
        short_ttl: Literal["clamp", "reject"] = "clamp",
        write_interval: float = 0.0,
        write_rate: Literal["wait", "error"] = "wait",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if short_ttl not in ("clamp", "reject"):
            raise ValueError("short_ttl must be 'clamp' or 'reject'")
        if write_rate not in ("wait", "error"):
            raise ValueError("write_rate must be 'wait' or 'error'")
        self.namespace = namespace
        self.prefix = prefix
        self.decode_responses = decode_responses
        self.short_ttl = short_ttl
        self.write_interval = write_interval
        self.write_rate = write_rate
        self.clock = clock
        self._sleep = sleep
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._last_write: dict[str, float] = {}

    # -- names and values ----------------------------------------------------------------

    def key(self, name: KeyT) -> str:
        """The KV name of Redis key ``name``: UTF-8 text under the prefix, within KV's limits."""
        if isinstance(name, bytes | memoryview):
            try:
                name = bytes(name).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidKey(
                    "KV key names are UTF-8 text; this Redis key is not valid UTF-8."
                ) from None
        elif not isinstance(name, str):
            raise DataError(f"Invalid key type {type(name).__name__}: use str or bytes.")
        kvkey = self.prefix + name
        key_bytes(kvkey)
        return kvkey

    def encode(self, value: ValueT) -> bytes:
        """Encode a value as redis-py does (its Encoder refuses the same inputs)."""
        if isinstance(value, bytes):
            return value
        if isinstance(value, memoryview):
            return value.tobytes()
        if isinstance(value, bool):
            raise DataError(
                "Invalid input of type: 'bool'. Convert to a bytes, string, int or float first."
            )
        if isinstance(value, int):
            return str(value).encode()
        if isinstance(value, float):
            return repr(value).encode()
        if isinstance(value, str):
            return value.encode("utf-8")
        raise DataError(
            f"Invalid input of type: '{type(value).__name__}'. "
            "Convert to a bytes, string, int or float first."
        )

    def out(self, data: bytes) -> Out:
        """An answer as redis-py gives it: bytes, or text with ``decode_responses``."""
        return data.decode("utf-8") if self.decode_responses else data  # strict, as redis-py

    def name_out(self, kvkey: str) -> Out:
        name = kvkey[len(self.prefix) :]
        return name if self.decode_responses else name.encode("utf-8")

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- locks -----------------------------------------------------------------------------

    @asynccontextmanager
    async def locked(self, *kvkeys: str) -> AsyncIterator[None]:
        """Per-key locks (taken in sorted order, so two keys never deadlock)."""
        keys = sorted(set(kvkeys))
        locks = []
        for key in keys:
            lock, users = self._locks.get(key, (asyncio.Lock(), 0))
            self._locks[key] = (lock, users + 1)
            locks.append(lock)
        held: builtins.list[asyncio.Lock] = []
        try:
            for lock in locks:
                await lock.acquire()
                held.append(lock)  # only what was acquired is released, even if cancelled
            yield
        finally:
            for lock in reversed(held):
                lock.release()
            for key in keys:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def busy_keys(self) -> builtins.list[str]:
        """Keys with a command under way (``flushdb`` waits for them)."""
        return builtins.list(self._locks)

    def remembered(self) -> builtins.list[str]:
        """Keys the namespace answers from this process's memory (written or deleted)."""
        namespace = self.namespace
        return namespace.remembered() if isinstance(namespace, ReadYourWrites) else []

    # -- reads -----------------------------------------------------------------------------

    def _live(self, item: Item | None) -> Item | None:
        if item is not None and item.expire_ms is not None and item.expire_ms <= self.now_ms():
            return None
        return item

    async def read(self, kvkey: str, kind: RedisType | None = None) -> Item | None:
        """The live value under ``kvkey``; with ``kind``, WRONGTYPE if it holds another type."""
        entry = await self.namespace.get(kvkey)
        item = self._live(None if entry is None else codec.decode(entry))
        if kind is not None and item is not None and item.type != kind:
            raise WrongTypeError
        return item

    async def read_many(self, kvkeys: Iterable[str]) -> dict[str, Item | None]:
        entries = await self.namespace.get_many(builtins.list(dict.fromkeys(kvkeys)))
        return {
            k: self._live(None if entry is None else codec.decode(entry))
            for k, entry in entries.items()
        }

    def listing(self, prefix: str, page_size: int = 1000) -> AsyncIterator[KeyInfo]:
        """Every live KV name under ``prefix`` (this store's prefix included by the caller)."""
        return iter_keys(self.namespace, prefix=prefix, page_size=page_size)

    # -- read-modify-write -------------------------------------------------------------------

    async def update(
        self, name: KeyT, kind: RedisType, change: Callable[[Item | None], Change]
    ) -> Any:
        """Read-modify-write of one key under its lock; ``change`` says what to write."""
        kvkey = self.key(name)
        async with self.locked(kvkey):
            outcome = change(await self.read(kvkey, kind))
            if outcome.write:
                await self.save(kvkey, outcome.item)
            return outcome.result

    # -- writes ------------------------------------------------------------------------------

    async def pace(self, kvkeys: Iterable[str]) -> None:
        """KV takes one write per second per key: space writes to one key that far apart."""
        if self.write_interval <= 0:
            return
        now = self.clock()
        wait = max(
            (self._last_write.get(k, -math.inf) + self.write_interval - now for k in kvkeys),
            default=0.0,
        )
        if wait > 0:
            if self.write_rate == "error":
                raise WriteRateExceeded(
                    f"A key was written less than {self.write_interval:g} s ago; "
                    "KV accepts one write per second per key."
                )
            await self._sleep(wait)
        if len(self._last_write) > 10_000:
            cutoff = self.clock() - self.write_interval
            self._last_write = {k: t for k, t in self._last_write.items() if t > cutoff}

    def _written(self, kvkeys: Iterable[str]) -> None:
        now = self.clock()
        for kvkey in kvkeys:
            self._last_write[kvkey] = now

    def check_requested_ttl(self, expire_ms: int, now_ms: int) -> None:
        """A TTL the caller asks for (``now_ms`` is the moment it was computed from): under
        the floor it is clamped, or refused if the policy says so. Rewrites of a key whose
        old TTL runs low are always clamped."""
        left = expire_ms - now_ms
        if 0 < left < KV_MIN_TTL_MS and self.short_ttl == "reject":
            raise TTLTooShort(
                f"A TTL of {left} ms is under KV's 60 s minimum (BRAINBOT_KV_SHORT_TTL=reject)."
            )

    def _put_item(self, kvkey: str, item: Item) -> PutItem:
        value, metadata = codec.encode(item)
        expiration = codec.kv_expiration(item.expire_ms, self.now_ms())
        return PutItem(kvkey, value, expiration, None, metadata)

    async def save(self, kvkey: str, item: Item | None) -> None:
        """Write (or, for None or an empty container, delete) one key; caller holds its lock."""
        if item is not None and item.type != "string" and not item.data:
            item = None
        await self.pace([kvkey])
        if item is None:
            await self.namespace.delete(kvkey)
        else:
            put = self._put_item(kvkey, item)
            await self.namespace.put(
                kvkey, put.value, expiration=put.expiration, metadata=put.metadata
            )
        self._written([kvkey])

    async def save_many(self, items: Mapping[str, Item]) -> None:
        """Write several keys in one bulk request (not atomic across keys on KV)."""
        await self.pace(items)
        result = await self.namespace.put_many([self._put_item(k, i) for k, i in items.items()])
        failed = set(result.unsuccessful_keys)
        self._written(k for k in items if k not in failed)
        if failed:
            raise ResponseError(
                f"KV did not accept {len(failed)} key(s) even after retries: "
                + ", ".join(sorted(failed)[:5])
            )

    async def delete_keys(self, kvkeys: builtins.list[str], *, pace: bool = True) -> None:
        """Delete keys in bulk, whatever this process believes of them (another process
        may have written them since)."""
        if pace:
            await self.pace(kvkeys)
        result = await self.namespace.delete_many(kvkeys)
        failed = set(result.unsuccessful_keys)
        self._written(k for k in kvkeys if k not in failed)
        if failed:
            raise ResponseError(f"KV did not delete {len(failed)} key(s) after retries.")


class CommandFamily:
    """Base of the command mixins: each runs on ``self._engine`` and nothing else."""

    _engine: Engine
