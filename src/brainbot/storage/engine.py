"""The engine under ``KVStore``'s commands: keys, locks, reads and paced writes on KV.

Every command family (``storage/commands/``) is written against this small execution
protocol and nothing else:

* :meth:`Engine.key` turns a Redis key into its KV name (checked, prefixed);
* :meth:`Engine.read` / :meth:`Engine.read_many` load and decode entries (expired ones
  read as absent; a wrong type raises ``WrongTypeError``);
* :meth:`Engine.update` runs a read-modify-write of one key: the command's function gets
  the current :class:`Item` (or None) and returns a :class:`Change`;
  :meth:`Engine.update_many` does the same for several keys (RENAME, DEL);
* :meth:`Engine.save` / :meth:`Engine.save_many` / :meth:`Engine.delete_keys` write
  without reading (the caller holds the locks), spaced to KV's one write per second per key.

**Atomicity.** On a coordinated namespace (:class:`~brainbot.kv.namespace.Coordinated`: the
embedded KV, the gateway with its Durable Object) reads are exact and read-modify-writes
are transactions of the namespace, atomic across every process and instance; the
command's function may then run more than once and must do no I/O. On any other namespace
(the REST client) they run under per-key locks of this process: atomic among its tasks,
last writer wins across processes (``composition.open_store`` refuses that setup for live
traffic unless ``BRAINBOT_KV_SINGLE_WRITER`` says there is one writer).

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
from brainbot.kv.namespace import (
    Entry,
    KeyInfo,
    KVNamespace,
    PutItem,
    Writes,
    coordinator_of,
    iter_keys,
)
from brainbot.kv.overlay import ReadYourWrites
from brainbot.storage import codec
from brainbot.storage.codec import Item, RedisType

KeyT = str | bytes | bytearray | memoryview
ValueT = bytes | bytearray | memoryview | str | int | float
Out = Any  # bytes, or str with decode_responses=True (as redis-py)
KV_MIN_TTL_MS = codec.KV_MIN_TTL_MS

F = TypeVar("F", bound=Callable[..., Any])


class Change(NamedTuple):
    """What a read-modify-write does: the command's ``result``, the key's new ``item``
    (None or an empty container deletes it), and whether to ``write`` at all."""

    result: Any
    item: Item | None
    write: bool


class Changes(NamedTuple):
    """What a read-modify-write of several keys does: the ``result`` and the new items of
    the keys it writes (None or an empty container deletes)."""

    result: Any
    items: Mapping[str, Item | None]


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
    own: bool = False
    """Its answer is this store's own choice (random members, or a cursor of KV's): it is
    not compared with another backend, and what it writes is mirrored by value."""

    def keys_of(self, arguments: Mapping[str, Any]) -> builtins.list[Any]:
        found: builtins.list[Any] = []
        for name in self.keys:
            value = arguments.get(name)
            if value is None:
                continue
            if isinstance(value, str | bytes | bytearray | memoryview) or not isinstance(
                value, Iterable
            ):
                found.append(value)  # one key (a bad one is the command's to refuse)
            else:
                found.extend(value)  # several keys, or a mapping keyed by them
        return found


def _declare(spec: CommandSpec) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        fn.__brainbot_command__ = spec  # type: ignore[attr-defined]
        return fn

    return mark


def reads(
    *keys: str, unordered: bool = False, tolerance: int = 0, own: bool = False
) -> Callable[[F], F]:
    """Declare a command that only reads the keys in parameters ``keys``."""
    return _declare(CommandSpec("read", keys, unordered, tolerance, own))


def writes(*keys: str, own: bool = False) -> Callable[[F], F]:
    """Declare a command that may write the keys in parameters ``keys`` (``own``: what it
    writes is its own random choice, e.g. SPOP)."""
    return _declare(CommandSpec("write", keys, own=own))


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
        encoding: str = "utf-8",
        encoding_errors: str = "strict",
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
        self.coordinator = coordinator_of(namespace)
        """The namespace as coordinated (atomic across processes), or None."""
        self.prefix = prefix
        self.decode_responses = decode_responses
        "".encode(encoding, encoding_errors)  # an unknown codec is refused here (LookupError)
        self.encoding = encoding
        """How str values are encoded and, with ``decode_responses``, answers decoded (as
        redis-py's ``encoding``/``encoding_errors``). Key names are always UTF-8: KV's rule."""
        self.encoding_errors = encoding_errors
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
        if isinstance(name, bytes | bytearray | memoryview):
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
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        if isinstance(value, bool):
            raise DataError(
                "Invalid input of type: 'bool'. Convert to a bytes, string, int or float first."
            )
        if isinstance(value, int):
            return str(value).encode()
        if isinstance(value, float):
            return repr(value).encode()
        if isinstance(value, str):
            return value.encode(self.encoding, self.encoding_errors)
        raise DataError(
            f"Invalid input of type: '{type(value).__name__}'. "
            "Convert to a bytes, string, int or float first."
        )

    def out(self, data: bytes) -> Out:
        """An answer as redis-py gives it: bytes, or text with ``decode_responses``."""
        if not self.decode_responses:
            return data
        return data.decode(self.encoding, self.encoding_errors)  # as redis-py's Encoder

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

    def _item(self, entry: Entry | None, kind: RedisType | None = None) -> Item | None:
        item = self._live(None if entry is None else codec.decode(entry))
        if kind is not None and item is not None and item.type != kind:
            raise WrongTypeError
        return item

    async def read(self, kvkey: str, kind: RedisType | None = None) -> Item | None:
        """The live value under ``kvkey``; with ``kind``, WRONGTYPE if it holds another type."""
        if self.coordinator is not None:
            entry = (await self.coordinator.read_exact([kvkey]))[kvkey]
        else:
            entry = await self.namespace.get(kvkey)
        return self._item(entry, kind)

    async def read_many(self, kvkeys: Iterable[str]) -> dict[str, Item | None]:
        keys = builtins.list(dict.fromkeys(kvkeys))
        if self.coordinator is not None:
            entries = await self.coordinator.read_exact(keys)
        else:
            entries = await self.namespace.get_many(keys)
        return {k: self._item(entry) for k, entry in entries.items()}

    def listing(self, prefix: str, page_size: int = 1000) -> AsyncIterator[KeyInfo]:
        """Every live KV name under ``prefix`` (this store's prefix included by the caller)."""
        return iter_keys(self.namespace, prefix=prefix, page_size=page_size)

    # -- read-modify-write -------------------------------------------------------------------

    async def update(
        self, name: KeyT, kind: RedisType | None, change: Callable[[Item | None], Change]
    ) -> Any:
        """Read-modify-write of one key under its lock; ``change`` says what to write."""
        kvkey = self.key(name)
        if self.coordinator is not None:

            def run(entries: Mapping[str, Entry | None]) -> tuple[Writes, Any]:
                outcome = change(self._item(entries[kvkey], kind))
                writes = {kvkey: self._write_of(kvkey, outcome.item)} if outcome.write else {}
                return writes, outcome.result

            return await self._transact([kvkey], run)
        async with self.locked(kvkey):
            outcome = change(await self.read(kvkey, kind))
            if outcome.write:
                await self.save(kvkey, outcome.item)
            return outcome.result

    async def update_many(
        self, kvkeys: builtins.list[str], change: Callable[[dict[str, Item | None]], Changes]
    ) -> Any:
        """Read-modify-write of several keys (already KV names) at once."""
        keys = builtins.list(dict.fromkeys(kvkeys))
        if self.coordinator is not None:

            def run(entries: Mapping[str, Entry | None]) -> tuple[Writes, Any]:
                outcome = change({k: self._item(entries[k]) for k in keys})
                return {k: self._write_of(k, i) for k, i in outcome.items.items()}, outcome.result

            return await self._transact(keys, run)
        async with self.locked(*keys):
            outcome = change(await self.read_many(keys))
            await self._apply(outcome.items)
            return outcome.result

    async def _transact(
        self, keys: builtins.list[str], run: Callable[[Mapping[str, Entry | None]], Any]
    ) -> Any:
        """``run`` as a transaction of the coordinator, under this process's locks (its
        tasks queue here rather than in conflicts). A write the pacing policy holds back
        (``write_interval`` set explicitly) waits, or raises ``WriteRateExceeded``, before
        anything is written, as on the uncoordinated path."""
        assert self.coordinator is not None
        wrote: builtins.list[str] = []

        def paced(entries: Mapping[str, Entry | None]) -> tuple[Writes, Any]:
            writes, result = run(entries)
            wait = self._wait(writes)
            if wait > 0:
                if self.write_rate == "error":
                    raise self._rate_error()
                raise _Held(wait)
            wrote[:] = builtins.list(writes)
            return writes, result

        async with self.locked(*keys):
            while True:
                try:
                    result = await self.coordinator.transact(keys, paced)
                except _Held as held:
                    await self._sleep(held.seconds)
                    continue
                self._written(wrote)
                return result

    def _write_of(self, kvkey: str, item: Item | None) -> PutItem | None:
        """The KV write that stores ``item`` (None: delete, as for an empty container)."""
        if item is None or _gone(item):
            return None
        return self._put_item(kvkey, item)

    async def _apply(self, items: Mapping[str, Item | None]) -> None:
        """Write several keys without a coordinator (paced together, then put and delete)."""
        if not items:
            return
        if len(items) == 1:
            [(kvkey, item)] = items.items()
            await self.save(kvkey, item)
            return
        await self.pace(items)
        puts = {k: i for k, i in items.items() if i is not None and not _gone(i)}
        gone = [k for k in items if k not in puts]
        if puts:
            await self.save_many(puts, pace=False)
        if gone:
            await self.delete_keys(gone, pace=False)

    # -- writes ------------------------------------------------------------------------------

    def _wait(self, kvkeys: Iterable[str]) -> float:
        """Seconds until every key of ``kvkeys`` may be written again (0: now)."""
        if self.write_interval <= 0:
            return 0.0
        now = self.clock()
        return max(
            (self._last_write.get(k, -math.inf) + self.write_interval - now for k in kvkeys),
            default=0.0,
        )

    def _rate_error(self) -> WriteRateExceeded:
        return WriteRateExceeded(
            f"A key was written less than {self.write_interval:g} s ago; "
            "KV accepts one write per second per key."
        )

    async def pace(self, kvkeys: Iterable[str]) -> None:
        """KV takes one write per second per key: space writes to one key that far apart
        (by default 0 on a coordinated namespace: the Durable Object coalesces KV's writes)."""
        wait = self._wait(kvkeys)
        if wait > 0:
            if self.write_rate == "error":
                raise self._rate_error()
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
        put = self._write_of(kvkey, item)
        await self.pace([kvkey])
        if self.coordinator is not None:
            await self.coordinator.write_exact({kvkey: put})
        elif put is None:
            await self.namespace.delete(kvkey)
        else:
            await self.namespace.put(
                kvkey, put.value, expiration=put.expiration, metadata=put.metadata
            )
        self._written([kvkey])

    async def save_many(self, items: Mapping[str, Item], *, pace: bool = True) -> None:
        """Write several keys in one bulk request (atomic only on a coordinated namespace)."""
        if pace:
            await self.pace(items)
        if self.coordinator is not None:
            await self.coordinator.write_exact({k: self._write_of(k, i) for k, i in items.items()})
            self._written(items)
            return
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
        if self.coordinator is not None:
            for start in range(0, len(kvkeys), 500):
                chunk = kvkeys[start : start + 500]
                await self.coordinator.write_exact(dict.fromkeys(chunk))
            self._written(kvkeys)
            return
        result = await self.namespace.delete_many(kvkeys)
        failed = set(result.unsuccessful_keys)
        self._written(k for k in kvkeys if k not in failed)
        if failed:
            raise ResponseError(f"KV did not delete {len(failed)} key(s) after retries.")


def _gone(item: Item | None) -> bool:
    """Whether writing ``item`` means deleting the key (None, or an empty container)."""
    return item is None or (item.type != "string" and not item.data)


class _Held(Exception):
    """A transaction's write held back by the pacing policy: wait, then run it again."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class CommandFamily:
    """Base of the command mixins: each runs on ``self._engine`` and nothing else."""

    _engine: Engine
