"""``KVStore``: the Redis operations brainbot uses, on a Workers KV namespace.

Method names, arguments and return values follow ``redis.asyncio.Redis``, so code ports by
changing its import. Each Redis key is one KV entry (``storage/codec.py``): the value holds
the data, the metadata holds the Redis type and the exact expiry. How each Redis behaviour
maps onto KV's rules (docs/storage.md has the full table):

* **TTL.** KV cannot expire a key sooner than 60 s. The exact expiry is kept in metadata
  and enforced on every read, so ``ttl``/``pttl``/``get`` behave as in Redis; the KV entry
  itself is kept for at least 60 s (``short_ttl="clamp"``, the default) or a short TTL is
  refused (``"reject"``).
* **Atomicity.** KV has no compare-and-swap. Read-modify-write operations (incr, lpush,
  hset, ...) take a per-key lock, so they are atomic among the tasks of one process.
  Across processes the last writer wins: a key updated from several processes needs a
  single owner (or a layout with one key per writer, as ``ConversationStore`` uses).
* **1 write per second per key.** Writes to one key are spaced ``write_interval`` apart:
  the next one waits (``write_rate="wait"``) or raises ``WriteRateExceeded`` (``"error"``).
* **Eventual consistency.** Keys this process wrote in the last ``recent_window`` seconds
  are answered from memory, so a process always reads its own writes (also in ``scan``);
  writes of other processes may take 60 s or more to show on Cloudflare.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Self

from brainbot.kv.errors import InvalidKey
from brainbot.kv.limits import key_bytes
from brainbot.kv.namespace import KVNamespace, PutItem, iter_keys
from brainbot.storage import codec
from brainbot.storage.codec import Item, RedisType
from brainbot.storage.errors import (
    DataError,
    ResponseError,
    TTLTooShort,
    UnsupportedOperation,
    WriteRateExceeded,
    WrongTypeError,
)

KeyT = str | bytes | memoryview
ValueT = bytes | memoryview | str | int | float
Out = Any  # bytes, or str with decode_responses=True (as redis-py)
ExpiryT = int | dt.timedelta
AbsExpiryT = int | dt.datetime

KV_MIN_TTL_MS = codec.KV_MIN_TTL_MS
INT64 = (-(2**63), 2**63 - 1)
_INTEGER = re.compile(rb"^(0|-?[1-9][0-9]*)$")


def redis_glob(pattern: str) -> re.Pattern[str]:
    """Compile a Redis glob (``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``) to a regex."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("^", "]") else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                chars = re.sub(r"([\]\[\\^])", r"\\\1", body)
                out.append(f"[{'^' if negate else ''}{chars}]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first special character: a KV list prefix."""
    match = re.match(r"[^*?\[\\]*", pattern)
    return match.group(0) if match else ""


def _seconds(value: ExpiryT, name: str) -> int:
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an int or a timedelta, not {type(value).__name__}")
    return value


def _millis(value: ExpiryT, name: str) -> int:
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an int or a timedelta, not {type(value).__name__}")
    return value


def _at_ms(value: AbsExpiryT, unit_ms: int) -> int:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"expiry must be an int or a datetime, not {type(value).__name__}")
    return value * unit_ms


def _index_range(n: int, start: int, end: int) -> range:
    """Redis's inclusive, negative-aware index range, clamped to a list of length n."""
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = n + end
    end = min(end, n - 1)
    return range(start, end + 1) if start <= end else range(0)


def _int_amount(amount: object) -> int:
    """An INCRBY/HINCRBY amount as Redis takes it: a whole number within 64 bits (redis-py
    sends a float as "1.5" or "1.0", which Redis refuses as not an integer)."""
    if isinstance(amount, bool):
        raise DataError("Invalid input of type: 'bool'.")
    if isinstance(amount, str | bytes):
        raw = amount.encode() if isinstance(amount, str) else amount
        amount = int(raw) if _INTEGER.match(raw) else None
    if not isinstance(amount, int) or not INT64[0] <= amount <= INT64[1]:
        raise ResponseError("value is not an integer or out of range")
    return amount


def _score_text(score: float) -> bytes:
    if math.isinf(score):
        return b"inf" if score > 0 else b"-inf"
    return format(score, ".17g").encode()


def _format_float(value: Decimal) -> bytes:
    """Redis's INCRBYFLOAT text: 17 significant digits, fixed-point, no trailing zeros."""
    text = format(Decimal(format(value, ".17g")), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return (text if text not in ("", "-0") else "0").encode()


class KVStore:
    """Redis operations on one KV namespace (keys optionally under ``prefix``)."""

    def __init__(
        self,
        namespace: KVNamespace,
        *,
        prefix: str = "",
        decode_responses: bool = False,
        short_ttl: Literal["clamp", "reject"] = "clamp",
        write_interval: float = 1.0,
        write_rate: Literal["wait", "error"] = "wait",
        recent_window: float = 60.0,
        recent_max: int = 10_000,
        recent_max_bytes: int = 64 * 1024 * 1024,
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
        self.recent_window = recent_window
        self.recent_max = recent_max
        self._clock = clock
        self._sleep = sleep
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._last_write: dict[str, float] = {}
        self._recent: OrderedDict[str, tuple[float, Item | None]] = OrderedDict()
        self._recent_bytes = 0
        self.recent_max_bytes = recent_max_bytes

    def __repr__(self) -> str:
        return f"KVStore({self.namespace!r}, prefix={self.prefix!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.namespace.aclose()

    # -- plumbing: keys, locks, reads, writes ------------------------------------------

    def _kvkey(self, name: KeyT) -> str:
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

    def _out(self, data: bytes) -> Out:
        return data.decode("utf-8") if self.decode_responses else data  # strict, as redis-py

    def _name_out(self, kvkey: str) -> Out:
        name = kvkey[len(self.prefix) :]
        return name if self.decode_responses else name.encode("utf-8")

    @staticmethod
    def _encode(value: ValueT) -> bytes:
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

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @asynccontextmanager
    async def _locked(self, *kvkeys: str) -> AsyncIterator[None]:
        """Per-key locks (taken in sorted order, so two keys never deadlock)."""
        keys = sorted(set(kvkeys))
        locks = []
        for key in keys:
            lock, users = self._locks.get(key, (asyncio.Lock(), 0))
            self._locks[key] = (lock, users + 1)
            locks.append(lock)
        held: list[asyncio.Lock] = []
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

    def _remembered(self, kvkey: str) -> tuple[bool, Item | None]:
        """What this process last wrote to ``kvkey``, if recent: a copy, so a change that
        then fails to reach KV never alters the memory."""
        hit = self._recent.get(kvkey)
        if hit is None or self._clock() - hit[0] >= self.recent_window:
            return False, None
        return True, None if hit[1] is None else codec.copy(hit[1])

    def _remember(self, kvkey: str, item: Item | None) -> None:
        """Keep a copy of a write that reached KV, bounded by count and by bytes."""
        if self.recent_window <= 0:
            return
        old = self._recent.pop(kvkey, None)
        if old is not None:
            self._recent_bytes -= codec.size(old[1])
        kept = None if item is None else codec.copy(item)
        self._recent[kvkey] = (self._clock(), kept)
        self._recent_bytes += codec.size(kept)
        cutoff = self._clock() - self.recent_window
        while self._recent and (
            len(self._recent) > self.recent_max
            or self._recent_bytes > self.recent_max_bytes
            or next(iter(self._recent.values()))[0] <= cutoff
        ):
            _, (_, dropped) = self._recent.popitem(last=False)
            self._recent_bytes -= codec.size(dropped)

    def _live(self, item: Item | None) -> Item | None:
        if item is not None and item.expire_ms is not None and item.expire_ms <= self._now_ms():
            return None
        return item

    async def _load(self, kvkey: str) -> Item | None:
        known, item = self._remembered(kvkey)
        if not known:
            entry = await self.namespace.get(kvkey)
            item = None if entry is None else codec.decode(entry)
        return self._live(item)

    async def _load_many(self, kvkeys: builtins.list[str]) -> dict[str, Item | None]:
        found: dict[str, Item | None] = {}
        missing = []
        for kvkey in dict.fromkeys(kvkeys):
            known, item = self._remembered(kvkey)
            if known:
                found[kvkey] = self._live(item)
            else:
                missing.append(kvkey)
        if missing:
            entries = await self.namespace.get_many(missing)
            for kvkey in missing:
                entry = entries[kvkey]
                found[kvkey] = self._live(None if entry is None else codec.decode(entry))
        return found

    async def _typed(self, kvkey: str, kind: RedisType) -> Item | None:
        item = await self._load(kvkey)
        if item is not None and item.type != kind:
            raise WrongTypeError
        return item

    async def _pace(self, kvkeys: Iterable[str]) -> None:
        """KV takes one write per second per key: space writes to one key that far apart."""
        if self.write_interval <= 0:
            return
        now = self._clock()
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
            cutoff = self._clock() - self.write_interval
            self._last_write = {k: t for k, t in self._last_write.items() if t > cutoff}

    def _kv_expiration(self, item: Item) -> int | None:
        return codec.kv_expiration(item.expire_ms, self._now_ms())

    def _check_requested_ttl(self, expire_ms: int, now_ms: int) -> None:
        """A TTL the caller asks for (``now_ms`` is the moment it was computed from): under
        the floor it is clamped, or refused if the policy says so. Rewrites of a key whose
        old TTL runs low are always clamped."""
        left = expire_ms - now_ms
        if 0 < left < KV_MIN_TTL_MS and self.short_ttl == "reject":
            raise TTLTooShort(
                f"A TTL of {left} ms is under KV's 60 s minimum (BRAINBOT_KV_SHORT_TTL=reject)."
            )

    async def _save(self, kvkey: str, item: Item | None) -> None:
        """Write (or, for None or an empty container, delete) one key; caller holds its lock."""
        if item is not None and item.type != "string" and not item.data:
            item = None
        expiration = None if item is None else self._kv_expiration(item)
        await self._pace([kvkey])
        if item is None:
            await self.namespace.delete(kvkey)
        else:
            value, metadata = codec.encode(item)
            await self.namespace.put(kvkey, value, expiration=expiration, metadata=metadata)
        self._last_write[kvkey] = self._clock()
        self._remember(kvkey, item)

    async def _save_many(self, items: dict[str, Item]) -> None:
        puts = []
        for kvkey, item in items.items():
            value, metadata = codec.encode(item)
            puts.append(PutItem(kvkey, value, self._kv_expiration(item), None, metadata))
        await self._pace(items)
        result = await self.namespace.put_many(puts)
        failed = set(result.unsuccessful_keys)
        now = self._clock()
        for kvkey, item in items.items():
            if kvkey not in failed:  # what did land is remembered even if some did not
                self._last_write[kvkey] = now
                self._remember(kvkey, item)
        if failed:
            raise ResponseError(
                f"KV did not accept {len(failed)} key(s) even after retries: "
                + ", ".join(sorted(failed)[:5])
            )

    # -- strings -----------------------------------------------------------------------

    async def get(self, name: KeyT) -> Out | None:
        item = await self._typed(self._kvkey(name), "string")
        return None if item is None else self._out(item.data)

    async def set(
        self,
        name: KeyT,
        value: ValueT,
        ex: ExpiryT | None = None,
        px: ExpiryT | None = None,
        nx: bool = False,
        xx: bool = False,
        keepttl: bool = False,
        get: bool = False,
        exat: AbsExpiryT | None = None,
        pxat: AbsExpiryT | None = None,
    ) -> Out | bool | None:
        kvkey, data = self._kvkey(name), self._encode(value)
        if sum(x is not None for x in (ex, px, exat, pxat)) + keepttl > 1:
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat`` and ``keepttl`` are mutually exclusive."
            )
        if nx and xx:
            raise DataError("``nx`` and ``xx`` are mutually exclusive.")
        now_ms = self._now_ms()
        expire_ms = self._expiry_from(ex, px, exat, pxat, "set", now_ms)
        if expire_ms is not None:
            self._check_requested_ttl(expire_ms, now_ms)
        async with self._locked(kvkey):
            if not (nx or xx or get or keepttl):  # a plain SET needs no read: 1 request
                await self._save(kvkey, Item("string", data, expire_ms))
                return True
            old = await self._load(kvkey)
            if get and old is not None and old.type != "string":
                raise WrongTypeError
            previous = self._out(old.data) if get and old is not None else None
            if (nx and old is not None) or (xx and old is None):
                return previous if get else None
            if keepttl and old is not None:
                expire_ms = old.expire_ms
            await self._save(kvkey, Item("string", data, expire_ms))
            return previous if get else True

    def _expiry_from(
        self,
        ex: ExpiryT | None,
        px: ExpiryT | None,
        exat: AbsExpiryT | None,
        pxat: AbsExpiryT | None,
        command: str,
        now: int,
    ) -> int | None:
        if ex is not None:
            seconds = _seconds(ex, "ex")
            if seconds <= 0:
                raise ResponseError(f"invalid expire time in '{command}' command")
            return now + seconds * 1000
        if px is not None:
            millis = _millis(px, "px")
            if millis <= 0:
                raise ResponseError(f"invalid expire time in '{command}' command")
            return now + millis
        if exat is not None or pxat is not None:
            at = _at_ms(exat, 1000) if exat is not None else _at_ms(pxat, 1)  # type: ignore[arg-type]
            if at <= 0:
                raise ResponseError(f"invalid expire time in '{command}' command")
            return at
        return None

    async def setnx(self, name: KeyT, value: ValueT) -> bool:
        return bool(await self.set(name, value, nx=True))

    async def getdel(self, name: KeyT) -> Out | None:
        kvkey = self._kvkey(name)
        async with self._locked(kvkey):
            item = await self._typed(kvkey, "string")
            if item is None:
                return None
            await self._save(kvkey, None)
            return self._out(item.data)

    async def mget(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> builtins.list[Out | None]:
        names = [keys] if isinstance(keys, str | bytes | memoryview) else builtins.list(keys)
        kvkeys = [self._kvkey(n) for n in [*names, *args]]
        found = await self._load_many(kvkeys)
        return [
            self._out(item.data)
            if (item := found[k]) is not None and item.type == "string"
            else None
            for k in kvkeys
        ]

    async def mset(self, mapping: Mapping[KeyT, ValueT]) -> bool:
        items = {self._kvkey(k): Item("string", self._encode(v)) for k, v in mapping.items()}
        async with self._locked(*items):
            await self._save_many(items)
        return True

    async def delete(self, *names: KeyT) -> int:
        kvkeys = builtins.list(dict.fromkeys(self._kvkey(n) for n in names))
        async with self._locked(*kvkeys):
            found = await self._load_many(kvkeys)
            present = [k for k in kvkeys if found[k] is not None]
            # every named key is deleted, even one this process believes gone: another
            # process may have written it since
            await self._pace(kvkeys)
            result = await self.namespace.delete_many(kvkeys)
            if result.unsuccessful_keys:
                raise ResponseError(
                    f"KV did not delete {len(result.unsuccessful_keys)} key(s) after retries."
                )
            for k in kvkeys:
                self._last_write[k] = self._clock()
                self._remember(k, None)
            return len(present)

    async def exists(self, *names: KeyT) -> int:
        kvkeys = [self._kvkey(n) for n in names]
        found = await self._load_many(kvkeys)
        return sum(found[k] is not None for k in kvkeys)

    async def _update_string(self, name: KeyT, change: Callable[[bytes | None], bytes]) -> bytes:
        kvkey = self._kvkey(name)
        async with self._locked(kvkey):
            item = await self._typed(kvkey, "string")
            data = change(None if item is None else item.data)
            await self._save(kvkey, Item("string", data, None if item is None else item.expire_ms))
            return data

    async def incrby(self, name: KeyT, amount: int = 1) -> int:
        amount = _int_amount(amount)

        def change(old: bytes | None) -> bytes:
            if old is not None and not _INTEGER.match(old):
                raise ResponseError("value is not an integer or out of range")
            current = 0 if old is None else int(old)
            if not INT64[0] <= current <= INT64[1]:
                raise ResponseError("value is not an integer or out of range")
            new = current + int(amount)
            if not INT64[0] <= new <= INT64[1]:
                raise ResponseError("increment or decrement would overflow")
            return str(new).encode()

        return int(await self._update_string(name, change))

    async def incr(self, name: KeyT, amount: int = 1) -> int:
        return await self.incrby(name, amount)

    async def decrby(self, name: KeyT, amount: int = 1) -> int:
        return await self.incrby(name, -amount)

    async def decr(self, name: KeyT, amount: int = 1) -> int:
        return await self.incrby(name, -amount)

    async def incrbyfloat(self, name: KeyT, amount: float = 1.0) -> float:
        def change(old: bytes | None) -> bytes:
            try:
                current = Decimal(0) if old is None else Decimal(old.decode("ascii"))
            except (InvalidOperation, UnicodeDecodeError):
                raise ResponseError("value is not a valid float") from None
            if old is not None and (not current.is_finite() or old != old.strip()):
                raise ResponseError("value is not a valid float")
            new = current + Decimal(repr(float(amount)))
            if not new.is_finite():
                raise ResponseError("increment would produce NaN or Infinity")
            return _format_float(new)

        return float(await self._update_string(name, change))

    async def append(self, name: KeyT, value: ValueT) -> int:
        extra = self._encode(value)
        return len(await self._update_string(name, lambda old: (old or b"") + extra))

    async def strlen(self, name: KeyT) -> int:
        item = await self._typed(self._kvkey(name), "string")
        return 0 if item is None else len(item.data)

    # -- expiry ------------------------------------------------------------------------

    async def _set_expiry(
        self,
        name: KeyT,
        at_ms: int | None,
        *,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
        now_ms: int | None = None,
    ) -> bool:
        if (nx and (xx or gt or lt)) or (gt and lt):
            raise ResponseError("NX and XX, GT or LT options at the same time are not compatible")
        now_ms = self._now_ms() if now_ms is None else now_ms
        kvkey = self._kvkey(name)
        async with self._locked(kvkey):
            item = await self._load(kvkey)
            if item is None:
                return False
            current = item.expire_ms
            if at_ms is not None:
                if (nx and current is not None) or (xx and current is None):
                    return False
                if gt and (current is None or at_ms <= current):
                    return False
                if lt and current is not None and at_ms >= current:
                    return False
                if at_ms <= now_ms:  # an expiry in the past deletes, as in Redis
                    await self._save(kvkey, None)
                    return True
                self._check_requested_ttl(at_ms, now_ms)
            elif current is None:
                return False  # persist on a key without a TTL
            item.expire_ms = at_ms
            await self._save(kvkey, item)
            return True

    async def expire(
        self,
        name: KeyT,
        time: ExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        now = self._now_ms()
        at = now + _seconds(time, "time") * 1000
        return await self._set_expiry(name, at, nx=nx, xx=xx, gt=gt, lt=lt, now_ms=now)

    async def pexpire(
        self,
        name: KeyT,
        time: ExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        now = self._now_ms()
        at = now + _millis(time, "time")
        return await self._set_expiry(name, at, nx=nx, xx=xx, gt=gt, lt=lt, now_ms=now)

    async def expireat(
        self,
        name: KeyT,
        when: AbsExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        return await self._set_expiry(name, _at_ms(when, 1000), nx=nx, xx=xx, gt=gt, lt=lt)

    async def pexpireat(
        self,
        name: KeyT,
        when: AbsExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        return await self._set_expiry(name, _at_ms(when, 1), nx=nx, xx=xx, gt=gt, lt=lt)

    async def persist(self, name: KeyT) -> bool:
        return await self._set_expiry(name, None)

    async def pttl(self, name: KeyT) -> int:
        item = await self._load(self._kvkey(name))
        if item is None:
            return -2
        if item.expire_ms is None:
            return -1
        return max(item.expire_ms - self._now_ms(), 0)

    async def ttl(self, name: KeyT) -> int:
        left = await self.pttl(name)
        return left if left < 0 else (left + 500) // 1000

    # -- lists -------------------------------------------------------------------------

    async def _update(
        self,
        name: KeyT,
        kind: RedisType,
        change: Callable[[Item | None], tuple[Any, Item | None, bool]],
    ) -> Any:
        """Read-modify-write under the key's lock; ``change`` returns (result, item, write?)."""
        kvkey = self._kvkey(name)
        async with self._locked(kvkey):
            item = await self._typed(kvkey, kind)
            result, new, write = change(item)
            if write:
                await self._save(kvkey, new)
            return result

    async def _push(self, name: KeyT, values: tuple[ValueT, ...], left: bool) -> int:
        if not values:
            raise DataError("wrong number of arguments for 'push' command")
        encoded = [self._encode(v) for v in values]

        def change(item: Item | None) -> tuple[int, Item, bool]:
            item = item or Item("list", [])
            item.data = [*reversed(encoded), *item.data] if left else [*item.data, *encoded]
            return len(item.data), item, True

        return int(await self._update(name, "list", change))

    async def lpush(self, name: KeyT, *values: ValueT) -> int:
        return await self._push(name, values, left=True)

    async def rpush(self, name: KeyT, *values: ValueT) -> int:
        return await self._push(name, values, left=False)

    async def _pop(
        self, name: KeyT, count: int | None, left: bool
    ) -> Out | builtins.list[Out] | None:
        def change(item: Item | None) -> tuple[Any, Item | None, bool]:
            if item is None:
                return None, None, False
            n = 1 if count is None else count
            if n < 0:
                raise ResponseError("value is out of range, must be positive")
            taken = item.data[:n] if left else item.data[::-1][:n]
            item.data = item.data[n:] if left else item.data[: len(item.data) - len(taken)]
            if count is None:
                return self._out(taken[0]), item, True
            return [self._out(v) for v in taken], item, bool(taken)

        return await self._update(name, "list", change)

    async def lpop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        return await self._pop(name, count, left=True)

    async def rpop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        return await self._pop(name, count, left=False)

    async def lrange(self, name: KeyT, start: int, end: int) -> builtins.list[Out]:
        item = await self._typed(self._kvkey(name), "list")
        if item is None:
            return []
        return [self._out(item.data[i]) for i in _index_range(len(item.data), start, end)]

    async def lindex(self, name: KeyT, index: int) -> Out | None:
        item = await self._typed(self._kvkey(name), "list")
        if item is None or not -len(item.data) <= index < len(item.data):
            return None
        return self._out(item.data[index])

    async def llen(self, name: KeyT) -> int:
        item = await self._typed(self._kvkey(name), "list")
        return 0 if item is None else len(item.data)

    async def ltrim(self, name: KeyT, start: int, end: int) -> bool:
        def change(item: Item | None) -> tuple[bool, Item | None, bool]:
            if item is None:
                return True, None, False
            kept = [item.data[i] for i in _index_range(len(item.data), start, end)]
            changed = len(kept) != len(item.data)
            item.data = kept
            return True, item, changed

        return bool(await self._update(name, "list", change))

    async def lrem(self, name: KeyT, count: int, value: ValueT) -> int:
        target = self._encode(value)

        def change(item: Item | None) -> tuple[int, Item | None, bool]:
            if item is None:
                return 0, None, False
            data = item.data if count >= 0 else item.data[::-1]
            limit = abs(count) or len(data)
            kept, removed = [], 0
            for element in data:
                if element == target and removed < limit:
                    removed += 1
                else:
                    kept.append(element)
            item.data = kept if count >= 0 else kept[::-1]
            return removed, item, removed > 0

        return int(await self._update(name, "list", change))

    async def lset(self, name: KeyT, index: int, value: ValueT) -> bool:
        data = self._encode(value)

        def change(item: Item | None) -> tuple[bool, Item, bool]:
            if item is None:
                raise ResponseError("no such key")
            if not -len(item.data) <= index < len(item.data):
                raise ResponseError("index out of range")
            item.data[index] = data
            return True, item, True

        return bool(await self._update(name, "list", change))

    # -- hashes ------------------------------------------------------------------------

    async def hset(
        self,
        name: KeyT,
        key: KeyT | None = None,
        value: ValueT | None = None,
        mapping: Mapping[KeyT, ValueT] | None = None,
        items: builtins.list[Any] | None = None,
    ) -> int:
        pairs: builtins.list[tuple[bytes, bytes]] = []
        if key is not None:
            if value is None:
                raise DataError("'hset' with 'key' needs a 'value'")
            pairs.append((self._encode(key), self._encode(value)))
        if mapping:
            pairs += [(self._encode(k), self._encode(v)) for k, v in mapping.items()]
        if items:
            pairs += [
                (self._encode(k), self._encode(v))
                for k, v in zip(items[::2], items[1::2], strict=True)
            ]
        if not pairs:
            raise DataError("'hset' with no key value pairs")

        def change(item: Item | None) -> tuple[int, Item, bool]:
            item = item or Item("hash", {})
            added = 0
            for field, data in pairs:
                added += field not in item.data
                item.data[field] = data
            return added, item, True

        return int(await self._update(name, "hash", change))

    async def hget(self, name: KeyT, key: KeyT) -> Out | None:
        item = await self._typed(self._kvkey(name), "hash")
        value = None if item is None else item.data.get(self._encode(key))
        return None if value is None else self._out(value)

    async def hmget(
        self, name: KeyT, keys: KeyT | Iterable[KeyT], *args: KeyT
    ) -> builtins.list[Out | None]:
        fields = [keys] if isinstance(keys, str | bytes | memoryview) else builtins.list(keys)
        item = await self._typed(self._kvkey(name), "hash")
        data = {} if item is None else item.data
        return [
            None if (v := data.get(self._encode(f))) is None else self._out(v)
            for f in [*fields, *args]
        ]

    async def hgetall(self, name: KeyT) -> dict[Out, Out]:
        item = await self._typed(self._kvkey(name), "hash")
        return {} if item is None else {self._out(k): self._out(v) for k, v in item.data.items()}

    async def hdel(self, name: KeyT, *keys: KeyT) -> int:
        fields = {self._encode(k) for k in keys}

        def change(item: Item | None) -> tuple[int, Item | None, bool]:
            if item is None:
                return 0, None, False
            removed = sum(item.data.pop(f, None) is not None for f in fields)
            return removed, item, removed > 0

        return int(await self._update(name, "hash", change))

    async def hexists(self, name: KeyT, key: KeyT) -> bool:
        item = await self._typed(self._kvkey(name), "hash")
        return item is not None and self._encode(key) in item.data

    async def hincrby(self, name: KeyT, key: KeyT, amount: int = 1) -> int:
        field = self._encode(key)
        amount = _int_amount(amount)

        def change(item: Item | None) -> tuple[int, Item, bool]:
            item = item or Item("hash", {})
            old = item.data.get(field)
            if old is not None and not _INTEGER.match(old):
                raise ResponseError("hash value is not an integer")
            new = (0 if old is None else int(old)) + int(amount)
            if not INT64[0] <= new <= INT64[1]:
                raise ResponseError("increment or decrement would overflow")
            item.data[field] = str(new).encode()
            return new, item, True

        return int(await self._update(name, "hash", change))

    async def hkeys(self, name: KeyT) -> builtins.list[Out]:
        item = await self._typed(self._kvkey(name), "hash")
        return [] if item is None else [self._out(k) for k in item.data]

    async def hvals(self, name: KeyT) -> builtins.list[Out]:
        item = await self._typed(self._kvkey(name), "hash")
        return [] if item is None else [self._out(v) for v in item.data.values()]

    async def hlen(self, name: KeyT) -> int:
        item = await self._typed(self._kvkey(name), "hash")
        return 0 if item is None else len(item.data)

    # -- sets --------------------------------------------------------------------------

    async def sadd(self, name: KeyT, *values: ValueT) -> int:
        members = [self._encode(v) for v in values]

        def change(item: Item | None) -> tuple[int, Item, bool]:
            item = item or Item("set", set())
            before = len(item.data)
            item.data.update(members)
            return len(item.data) - before, item, len(item.data) != before

        return int(await self._update(name, "set", change))

    async def srem(self, name: KeyT, *values: ValueT) -> int:
        members = {self._encode(v) for v in values}

        def change(item: Item | None) -> tuple[int, Item | None, bool]:
            if item is None:
                return 0, None, False
            removed = len(item.data & members)
            item.data -= members
            return removed, item, removed > 0

        return int(await self._update(name, "set", change))

    async def smembers(self, name: KeyT) -> builtins.set[Out]:
        item = await self._typed(self._kvkey(name), "set")
        return set() if item is None else {self._out(m) for m in item.data}

    async def sismember(self, name: KeyT, value: ValueT) -> int:
        item = await self._typed(self._kvkey(name), "set")
        return int(item is not None and self._encode(value) in item.data)

    async def scard(self, name: KeyT) -> int:
        item = await self._typed(self._kvkey(name), "set")
        return 0 if item is None else len(item.data)

    # -- sorted sets -------------------------------------------------------------------

    async def zadd(
        self,
        name: KeyT,
        mapping: Mapping[ValueT, float],
        nx: bool = False,
        xx: bool = False,
        ch: bool = False,
        incr: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> int | float | None:
        if not mapping:
            raise DataError("ZADD requires at least one element/score pair")
        if nx and xx:
            raise DataError("ZADD allows either 'nx' or 'xx', not both")
        if incr and len(mapping) != 1:
            raise DataError(
                "ZADD option 'incr' only works when passing a single element/score pair"
            )
        if nx and (gt or lt):
            raise DataError("Only one of 'nx', 'lt', or 'gr' may be defined.")
        if gt and lt:
            raise DataError("Only one of 'gt' or 'lt' may be defined.")
        try:
            pairs = [(self._encode(m), float(s)) for m, s in mapping.items()]
        except (TypeError, ValueError):
            raise ResponseError("value is not a valid float") from None
        if any(math.isnan(s) for _, s in pairs):
            raise ResponseError("value is not a valid float")

        def change(item: Item | None) -> tuple[Any, Item | None, bool]:
            item = item or Item("zset", {})
            added = changed = 0
            result: float | None = None
            for member, score in pairs:
                old = item.data.get(member)
                if (nx and old is not None) or (xx and old is None):
                    continue
                new = (old or 0.0) + score if incr else score
                if math.isnan(new):
                    raise ResponseError("resulting score is not a number (NaN)")
                if old is not None and ((gt and new <= old) or (lt and new >= old)):
                    continue
                if old is None:
                    added += 1
                elif new != old:
                    changed += 1
                item.data[member] = new
                result = new
            if incr:
                return result, item, result is not None
            return (added + changed if ch else added), item, bool(added or changed)

        return await self._update(name, "zset", change)  # type: ignore[no-any-return]

    async def zrange(
        self,
        name: KeyT,
        start: int,
        end: int,
        desc: bool = False,
        withscores: bool = False,
        score_cast_func: Callable[[Any], Any] = float,
        byscore: bool = False,
        bylex: bool = False,
        offset: int | None = None,
        num: int | None = None,
    ) -> builtins.list[Any]:
        if byscore or bylex or offset is not None or num is not None:
            raise UnsupportedOperation("zrange supports index ranges only (no byscore/bylex/limit)")
        item = await self._typed(self._kvkey(name), "zset")
        if item is None:
            return []
        ordered = sorted(item.data.items(), key=lambda p: (p[1], p[0]), reverse=desc)
        chosen = [ordered[i] for i in _index_range(len(ordered), start, end)]
        if withscores:  # redis-py hands score_cast_func the reply's text, as Redis sends it
            return [(self._out(m), score_cast_func(_score_text(s))) for m, s in chosen]
        return [self._out(m) for m, _ in chosen]

    async def zrem(self, name: KeyT, *values: ValueT) -> int:
        members = [self._encode(v) for v in values]

        def change(item: Item | None) -> tuple[int, Item | None, bool]:
            if item is None:
                return 0, None, False
            removed = sum(item.data.pop(m, None) is not None for m in set(members))
            return removed, item, removed > 0

        return int(await self._update(name, "zset", change))

    async def zscore(self, name: KeyT, value: ValueT) -> float | None:
        item = await self._typed(self._kvkey(name), "zset")
        return None if item is None else item.data.get(self._encode(value))

    async def zcard(self, name: KeyT) -> int:
        item = await self._typed(self._kvkey(name), "zset")
        return 0 if item is None else len(item.data)

    # -- keyspace ----------------------------------------------------------------------

    async def scan_iter(
        self, match: str | bytes | None = None, count: int | None = None, _type: str | None = None
    ) -> AsyncIterator[Out]:
        """Every live key matching the glob (and type), listed without reading values."""
        pattern = match.decode("utf-8") if isinstance(match, bytes) else (match or "*")
        regex = redis_glob(pattern)
        kind = _type.lower() if _type else None
        page = max(10, min(count or 1000, 1000))
        now = self._now_ms()
        recent = {
            k: item
            for k, (at, item) in self._recent.items()
            if self._clock() - at < self.recent_window and k.startswith(self.prefix)
        }
        seen: builtins.set[str] = set()

        def wanted(kvkey: str, kind_of: str, expire_ms: int | None) -> bool:
            return (
                (expire_ms is None or expire_ms > now)
                and (kind is None or kind_of == kind)
                and regex.match(kvkey[len(self.prefix) :]) is not None
            )

        async for info in iter_keys(
            self.namespace, prefix=self.prefix + literal_prefix(pattern), page_size=page
        ):
            if info.name in recent:
                seen.add(info.name)
                item = recent[info.name]
                if item is not None and wanted(info.name, item.type, item.expire_ms):
                    yield self._name_out(info.name)
            elif wanted(info.name, codec.type_of(info.metadata), codec.expiry_of(info.metadata)):
                yield self._name_out(info.name)
        for kvkey, item in recent.items():
            if (
                kvkey not in seen
                and item is not None
                and kvkey.startswith(self.prefix + literal_prefix(pattern))
            ) and wanted(kvkey, item.type, item.expire_ms):
                yield self._name_out(kvkey)

    async def keys(self, pattern: str | bytes = "*") -> builtins.list[Out]:
        return [k async for k in self.scan_iter(match=pattern)]

    async def type(self, name: KeyT) -> Out:
        item = await self._load(self._kvkey(name))
        return self._out((item.type if item is not None else "none").encode())

    async def rename(self, src: KeyT, dst: KeyT) -> bool:
        source, target = self._kvkey(src), self._kvkey(dst)
        async with self._locked(source, target):
            item = await self._load(source)
            if item is None:
                raise ResponseError("no such key")
            if source != target:
                await self._pace([source, target])  # refuse (error mode) before either write
                await self._save(target, item)
                await self._save(source, None)
            return True

    async def flushdb(self, asynchronous: bool = False) -> bool:
        """Delete every key under this store's prefix (the whole namespace if it has none)."""
        names = [info.name async for info in iter_keys(self.namespace, prefix=self.prefix)]
        listed = set(names)
        names += [k for k in self._recent if k.startswith(self.prefix) and k not in listed]
        names += [k for k in self._locks if k.startswith(self.prefix) and k not in set(names)]
        async with self._locked(*names):  # writes under way finish first, none start
            if names:
                result = await self.namespace.delete_many(names)
                if result.unsuccessful_keys:
                    raise ResponseError(
                        f"KV did not delete {len(result.unsuccessful_keys)} key(s)."
                    )
            for name in names:
                self._last_write[name] = self._clock()
                self._remember(name, None)
        return True
