"""String commands: GET, SET (with every option), SETNX, SETEX, PSETEX, GETSET, GETEX,
GETDEL, MGET, MSET, MSETNX, counters (INCR/INCRBY/DECR/DECRBY/INCRBYFLOAT), APPEND, STRLEN,
GETRANGE/SUBSTR, SETRANGE, LCS."""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
from array import array
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from brainbot.errors import (
    DataError,
    ResponseError,
    UnsupportedOperation,
    ValueTooLarge,
    WrongTypeError,
)
from brainbot.kv.limits import MAX_VALUE_BYTES
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import (
    INT64,
    INTEGER,
    AbsExpiryT,
    ExpiryOption,
    ExpiryT,
    expiry_from,
    expiry_option,
    format_float,
    int_amount,
    long_double_sum,
    redis_int,
)
from brainbot.storage.engine import (
    Change,
    Changes,
    CommandFamily,
    KeyT,
    Out,
    ValueT,
    reads,
    writes,
)

MAX_STRING = 512 * 1024 * 1024  # Redis's proto-max-bulk-len
LCS_INLINE_CELLS = 100_000  # a larger LCS table is filled on a worker thread


class StringCommands(CommandFamily):
    @reads("name")
    async def get(self, name: KeyT) -> Out | None:
        item = await self._engine.read(self._engine.key(name), "string")
        return None if item is None else self._engine.out(item.data)

    @writes("name")
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
        ifeq: bytes | str | None = None,
        ifne: bytes | str | None = None,
        ifdeq: str | None = None,
        ifdne: str | None = None,
    ) -> Out | bool | None:
        """SET with every option of redis-py 8.1, IFEQ/IFNE (Redis 8.4) included; IFDEQ/
        IFDNE compare XXH3 digests, which this store does not compute."""
        engine = self._engine
        kvkey, data = engine.key(name), engine.encode(value)
        if sum(x is not None for x in (ex, px, exat, pxat)) + keepttl > 1:
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat``, and ``keepttl`` are mutually exclusive."
            )
        conditions = (nx, xx, ifeq is not None, ifne is not None)
        if sum(conditions) + (ifdeq is not None) + (ifdne is not None) > 1:
            raise DataError(
                "``nx``, ``xx``, ``ifeq``, ``ifne``, ``ifdeq``, ``ifdne`` are mutually exclusive."
            )
        if ifdeq is not None or ifdne is not None:
            raise UnsupportedOperation(
                "SET IFDEQ/IFDNE compare XXH3 digests, which this store does not compute; "
                "use IFEQ/IFNE with the value itself."
            )
        compared = ifeq if ifne is None else ifne
        same = None if compared is None else engine.encode(compared)
        now_ms = engine.now_ms()
        expire_ms = expiry_from(ex, px, exat, pxat, "set", now_ms)
        if expire_ms is not None:
            engine.check_requested_ttl(expire_ms, now_ms)
        if not (nx or xx or get or keepttl or same is not None):  # plain: no read, 1 request
            async with engine.locked(kvkey):
                await engine.save(kvkey, Item("string", data, expire_ms))
            return True

        def change(old: Item | None) -> Change:
            if get and old is not None and old.type != "string":
                raise WrongTypeError
            previous = engine.out(old.data) if get and old is not None else None
            if (nx and old is not None) or (xx and old is None):
                return Change(previous if get else None, None, False)
            if same is not None:  # IFEQ: only over that value; IFNE: unless it is that value
                if old is not None and old.type != "string":
                    raise WrongTypeError
                equal = old is not None and old.data == same
                if (ifeq is not None and not equal) or (ifne is not None and equal):
                    return Change(previous if get else None, None, False)
            keep = old.expire_ms if keepttl and old is not None else expire_ms
            return Change(previous if get else True, Item("string", data, keep), True)

        return await engine.update(name, None, change)

    @writes("name")
    async def setnx(self, name: KeyT, value: ValueT) -> bool:
        return bool(await self.set(name, value, nx=True))

    async def _set_for(
        self, name: KeyT, value: ValueT, time: object, unit_ms: int, command: str
    ) -> bool:
        """SETEX/PSETEX: a plain SET with a relative expiry, sent as redis-py sends it."""
        engine = self._engine
        kvkey, data = engine.key(name), engine.encode(value)
        now_ms = engine.now_ms()
        expire_ms = ExpiryOption(time, unit_ms, relative=True).at(now_ms, command)
        engine.check_requested_ttl(expire_ms, now_ms)
        async with engine.locked(kvkey):
            await engine.save(kvkey, Item("string", data, expire_ms))
        return True

    @writes("name")
    async def setex(self, name: KeyT, time: ExpiryT, value: ValueT) -> bool:
        sent = int(time.total_seconds()) if isinstance(time, dt.timedelta) else time
        return await self._set_for(name, value, sent, 1000, "setex")

    @writes("name")
    async def psetex(self, name: KeyT, time_ms: ExpiryT, value: ValueT) -> bool:
        sent = int(time_ms.total_seconds() * 1000) if isinstance(time_ms, dt.timedelta) else time_ms
        return await self._set_for(name, value, sent, 1, "psetex")

    @writes("name")
    async def getset(self, name: KeyT, value: ValueT) -> Out | None:
        """Set the value (dropping any TTL, as Redis does) and answer the old one."""
        engine = self._engine
        data = engine.encode(value)

        def change(item: Item | None) -> Change:
            old = None if item is None else engine.out(item.data)
            return Change(old, Item("string", data), True)

        return await engine.update(name, "string", change)

    @writes("name")
    async def getex(
        self,
        name: KeyT,
        ex: ExpiryT | None = None,
        px: ExpiryT | None = None,
        exat: AbsExpiryT | None = None,
        pxat: AbsExpiryT | None = None,
        persist: bool = False,
    ) -> Out | None:
        """GET that also sets or drops the TTL. Redis checks the time only once it found a
        string under the key, so a missing key answers None whatever the time."""
        engine = self._engine
        if sum(x is not None for x in (ex, px, exat, pxat)) + bool(persist) > 1:
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat``, and ``persist`` are mutually exclusive."
            )
        option = expiry_option(ex, px, exat, pxat)
        now_ms = engine.now_ms()

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(None, None, False)
            value = engine.out(item.data)
            if option is not None:
                at = option.at(now_ms, "getex")
                if at <= now_ms:  # EXAT/PXAT in the past deletes, as in Redis
                    return Change(value, None, True)
                engine.check_requested_ttl(at, now_ms)
                return Change(value, Item("string", item.data, at), True)
            if persist and item.expire_ms is not None:
                return Change(value, Item("string", item.data), True)
            return Change(value, None, False)

        return await engine.update(name, "string", change)

    @writes("name")
    async def getdel(self, name: KeyT) -> Out | None:
        engine = self._engine

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(None, None, False)
            return Change(engine.out(item.data), None, True)

        return await engine.update(name, "string", change)

    @reads("keys", "args")
    async def mget(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> builtins.list[Out | None]:
        engine = self._engine
        names = (
            [keys]
            if isinstance(keys, str | bytes | bytearray | memoryview)
            else builtins.list(keys)
        )
        kvkeys = [engine.key(n) for n in [*names, *args]]
        found = await engine.read_many(kvkeys)
        return [
            engine.out(item.data)
            if (item := found[k]) is not None and item.type == "string"
            else None
            for k in kvkeys
        ]

    @writes("mapping")
    async def mset(self, mapping: Mapping[KeyT, ValueT]) -> bool:
        engine = self._engine
        items = {engine.key(k): Item("string", engine.encode(v)) for k, v in mapping.items()}
        if not items:
            raise ResponseError("wrong number of arguments for 'mset' command")
        async with engine.locked(*items):
            await engine.save_many(items)
        return True

    @writes("mapping")
    async def msetnx(self, mapping: Mapping[KeyT, ValueT]) -> bool:
        """Set every key, or none if any of them exists (one transaction over all)."""
        engine = self._engine
        items = {engine.key(k): Item("string", engine.encode(v)) for k, v in mapping.items()}
        if not items:
            raise ResponseError("wrong number of arguments for 'msetnx' command")

        def change(found: dict[str, Item | None]) -> Changes:
            if any(item is not None for item in found.values()):
                return Changes(False, {})
            return Changes(True, items)

        return bool(await engine.update_many(builtins.list(items), change))

    @writes("mapping")
    async def msetex(
        self,
        mapping: Mapping[KeyT, ValueT],
        data_persist_option: Any = None,
        ex: ExpiryT | None = None,
        px: ExpiryT | None = None,
        exat: AbsExpiryT | None = None,
        pxat: AbsExpiryT | None = None,
        keepttl: bool = False,
    ) -> int:
        """MSETEX (Redis 8.4): set every key with one expiry; with NX only if none exists,
        with XX only if all exist (one transaction over all). 1 if set, else 0."""
        engine = self._engine
        if sum(x is not None for x in (ex, px, exat, pxat)) + keepttl > 1:
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat``, and ``keepttl`` are mutually exclusive."
            )
        condition = getattr(data_persist_option, "value", data_persist_option)
        if condition not in (None, "NX", "XX"):
            raise ResponseError("syntax error")
        items = {engine.key(k): engine.encode(v) for k, v in mapping.items()}
        if not items:
            raise ResponseError("wrong number of arguments for 'msetex' command")
        now_ms = engine.now_ms()
        expire_ms = expiry_from(ex, px, exat, pxat, "msetex", now_ms)
        if expire_ms is not None:
            engine.check_requested_ttl(expire_ms, now_ms)

        def change(found: dict[str, Item | None]) -> Changes:
            present = [item is not None for item in found.values()]
            if (condition == "NX" and any(present)) or (condition == "XX" and not all(present)):
                return Changes(0, {})
            return Changes(
                1,
                {
                    k: Item(
                        "string",
                        data,
                        found[k].expire_ms if keepttl and found[k] is not None else expire_ms,  # type: ignore[union-attr]
                    )
                    for k, data in items.items()
                },
            )

        return int(await engine.update_many(builtins.list(items), change))

    @writes("name")
    async def increx(
        self,
        name: KeyT,
        *,
        byfloat: ValueT | None = None,
        byint: ValueT | None = None,
        lbound: ValueT | None = None,
        ubound: ValueT | None = None,
        saturate: bool = False,
        ex: ExpiryT | None = None,
        px: ExpiryT | None = None,
        exat: AbsExpiryT | None = None,
        pxat: AbsExpiryT | None = None,
        persist: bool = False,
        enx: bool = False,
    ) -> builtins.list[Any]:
        """INCREX (Redis 8.x): increment within bounds, optionally setting the expiry;
        answers [new value, actual increment]. Out of bounds: saturated to the bound (or
        the type's limit) with ``saturate``, else refused: [current value, 0], nothing
        changed. Checked client-side exactly as redis-py does."""
        if byfloat is not None and byint is not None:
            raise DataError("``byfloat`` and ``byint`` are mutually exclusive.")
        if sum(x is not None for x in (ex, px, exat, pxat)) + persist > 1:
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat``, and ``persist`` are mutually exclusive."
            )
        if enx and ex is None and px is None and exat is None and pxat is None:
            raise DataError("``enx`` requires one of ``ex``, ``px``, ``exat``, or ``pxat``.")
        engine = self._engine
        floating = byfloat is not None

        def number(value: ValueT | None, default: Decimal | None) -> Decimal | None:
            if value is None:
                return default
            text = engine.encode(value)
            try:
                parsed = Decimal(text.decode("ascii"))
            except (InvalidOperation, UnicodeDecodeError):
                parsed = Decimal("nan")
            if not parsed.is_finite() or (not floating and not INTEGER.match(text)):
                kind = "a valid float" if floating else "an integer or out of range"
                raise ResponseError(f"value is not {kind}")
            return parsed

        step = number(byfloat if floating else byint, Decimal(1))
        low = number(lbound, Decimal(INT64[0]) if not floating else None)
        high = number(ubound, Decimal(INT64[1]) if not floating else None)
        now_ms = engine.now_ms()
        expire_ms = expiry_from(ex, px, exat, pxat, "increx", now_ms)
        if expire_ms is not None:
            engine.check_requested_ttl(expire_ms, now_ms)

        def shown(value: Decimal) -> Any:
            return float(value) if floating else int(value)

        def change(item: Item | None) -> Change:
            current = number(item.data, None) if item is not None else Decimal(0)
            assert current is not None
            assert step is not None
            new = current + step
            if (low is not None and new < low) or (high is not None and new > high):
                if not saturate:
                    return Change([shown(current), shown(Decimal(0))], None, False)
                new = max(low, new) if low is not None and new < low else new
                new = min(high, new) if high is not None and new > high else new
            keep = None if item is None else item.expire_ms
            if persist:
                keep = None
            elif expire_ms is not None and not (enx and keep is not None):
                keep = expire_ms
            data = format_float(new) if floating else str(int(new)).encode()
            return Change([shown(new), shown(new - current)], Item("string", data, keep), True)

        return await engine.update(name, "string", change)  # type: ignore[no-any-return]

    async def _update_string(self, name: KeyT, change: Callable[[bytes | None], bytes]) -> bytes:
        def update(item: Item | None) -> Change:
            data = change(None if item is None else item.data)
            return Change(
                data, Item("string", data, None if item is None else item.expire_ms), True
            )

        return await self._engine.update(name, "string", update)  # type: ignore[no-any-return]

    @writes("name")
    async def incrby(self, name: KeyT, amount: int = 1) -> int:
        amount = int_amount(amount)

        def change(old: bytes | None) -> bytes:
            if old is not None and not INTEGER.match(old):
                raise ResponseError("value is not an integer or out of range")
            current = 0 if old is None else int(old)
            if not INT64[0] <= current <= INT64[1]:
                raise ResponseError("value is not an integer or out of range")
            new = current + int(amount)
            if not INT64[0] <= new <= INT64[1]:
                raise ResponseError("increment or decrement would overflow")
            return str(new).encode()

        return int(await self._update_string(name, change))

    @writes("name")
    async def incr(self, name: KeyT, amount: int = 1) -> int:
        return await self.incrby(name, amount)

    @writes("name")
    async def decrby(self, name: KeyT, amount: int = 1) -> int:
        return await self.incrby(name, -amount)

    @writes("name")
    async def decr(self, name: KeyT, amount: int = 1) -> int:
        return await self.incrby(name, -amount)

    @writes("name")
    async def incrbyfloat(self, name: KeyT, amount: float = 1.0) -> float:
        def change(old: bytes | None) -> bytes:
            try:
                current = Decimal(0) if old is None else Decimal(old.decode("ascii"))
            except (InvalidOperation, UnicodeDecodeError):
                raise ResponseError("value is not a valid float") from None
            if old is not None and (not current.is_finite() or old != old.strip()):
                raise ResponseError("value is not a valid float")
            text = long_double_sum(current, Decimal(repr(float(amount))))
            if text is None:  # past a long double's range
                raise ResponseError("increment would produce NaN or Infinity")
            return text

        return float(await self._update_string(name, change))

    @writes("name")
    async def append(self, name: KeyT, value: ValueT) -> int:
        extra = self._engine.encode(value)
        return len(await self._update_string(name, lambda old: (old or b"") + extra))

    @reads("name")
    async def strlen(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "string")
        return 0 if item is None else len(item.data)

    @reads("key")
    async def getrange(self, key: KeyT, start: int, end: int) -> Out:
        engine = self._engine
        first, last = redis_int(start), redis_int(end)
        item = await engine.read(engine.key(key), "string")
        return engine.out(_substring(b"" if item is None else item.data, first, last))

    @reads("name")
    async def substr(self, name: KeyT, start: int, end: int = -1) -> Out:
        return await self.getrange(name, start, end)

    @writes("name")
    async def setrange(self, name: KeyT, offset: int, value: ValueT) -> int:
        """Overwrite from ``offset``, padding with zero bytes; the key keeps its TTL."""
        engine = self._engine
        data = engine.encode(value)
        at = redis_int(offset)
        if at < 0:
            raise ResponseError("offset is out of range")

        def change(item: Item | None) -> Change:
            old = b"" if item is None else item.data
            if not data:  # nothing to write: not even a missing key is created
                return Change(len(old), None, False)
            size = max(len(old), at + len(data))
            if at + len(data) > MAX_STRING:
                raise ResponseError("string exceeds maximum allowed size (proto-max-bulk-len)")
            if size > MAX_VALUE_BYTES:  # KV would refuse it: say so before building it
                raise ValueTooLarge(f"Value length of {size} exceeds limit of {MAX_VALUE_BYTES}.")
            new = old[:at].ljust(at, b"\0") + data + old[at + len(data) :]
            return Change(
                len(new), Item("string", new, None if item is None else item.expire_ms), True
            )

        return int(await engine.update(name, "string", change))

    @reads("key1", "key2")
    async def lcs(
        self,
        key1: KeyT,
        key2: KeyT,
        len: bool | None = False,
        idx: bool | None = False,
        minmatchlen: int | None = 0,
        withmatchlen: bool | None = False,
    ) -> Out | int | builtins.list[Any]:
        """The longest common subsequence of two strings (a missing key is ""), its length
        (``len``), or its matching ranges (``idx``), as Redis computes and orders them."""
        engine = self._engine
        first, second = engine.key(key1), engine.key(key2)
        found = await engine.read_many([first, second])
        if any(item is not None and item.type != "string" for item in found.values()):
            raise ResponseError("The specified keys must contain string values")
        a, b = (b"" if (item := found[k]) is None else item.data for k in (first, second))
        least = 0
        if minmatchlen is not None and minmatchlen != 0:  # what redis-py sends
            least = max(redis_int(minmatchlen), 0)
        if len and idx:
            raise ResponseError("If you want both the length and indexes, please just use IDX.")
        if (builtins.len(a) + 1) * (builtins.len(b) + 1) * 4 > MAX_STRING:
            raise ResponseError(
                "Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len"
            )
        if (builtins.len(a) + 1) * (builtins.len(b) + 1) > LCS_INLINE_CELLS:
            common, matches = await asyncio.to_thread(_lcs, a, b)  # keep the loop answering
        else:
            common, matches = _lcs(a, b)
        if idx:
            ranges: builtins.list[Any] = [
                [[a0, a1], [b0, b1], *([a1 - a0 + 1] if withmatchlen else [])]
                for a0, a1, b0, b1 in matches
                if least == 0 or a1 - a0 + 1 >= least
            ]
            return [engine.out(b"matches"), ranges, engine.out(b"len"), builtins.len(common)]
        if len:
            return builtins.len(common)
        return engine.out(common)


def _substring(data: bytes, start: int, end: int) -> bytes:
    """GETRANGE's slice, with its quirks: a negative end past the start clamps to 0."""
    n = len(data)
    if start < 0 and end < 0 and start > end:
        return b""
    start = max(n + start if start < 0 else start, 0)
    end = min(max(n + end if end < 0 else end, 0), n - 1)
    return data[start : end + 1] if start <= end and n else b""


def _lcs(a: bytes, b: bytes) -> tuple[bytes, builtins.list[tuple[int, int, int, int]]]:
    """Redis's LCS: the dynamic-programming table, then the walk back from the end that
    picks the subsequence and its contiguous ranges (a_start, a_end, b_start, b_end),
    last ones first, exactly as ``lcsCommand`` does. The table takes 4 bytes a cell, as
    Redis's, and O(len(a) * len(b)) Python steps to fill (seconds for strings of some KB)."""
    alen, blen = len(a), len(b)
    table = [array("I", bytes(4 * (blen + 1)))]
    for i in range(1, alen + 1):
        above, row, ai = table[-1], array("I", bytes(4 * (blen + 1))), a[i - 1]
        for j in range(1, blen + 1):
            if ai == b[j - 1]:
                row[j] = above[j - 1] + 1
            else:
                row[j] = above[j] if above[j] > row[j - 1] else row[j - 1]
        table.append(row)
    size = table[alen][blen]
    common = bytearray(size)
    ranges: builtins.list[tuple[int, int, int, int]] = []
    a_start, a_end, b_start, b_end = alen, 0, 0, 0  # a_start == alen: no range open
    i, j = alen, blen
    while i > 0 and j > 0:
        emit = False
        if a[i - 1] == b[j - 1]:
            common[size - 1] = a[i - 1]
            if a_start == alen:
                a_start = a_end = i - 1
                b_start = b_end = j - 1
            elif a_start == i and b_start == j:
                a_start, b_start = a_start - 1, b_start - 1
            else:
                emit = True
            if a_start == 0 or b_start == 0:
                emit = True
            size, i, j = size - 1, i - 1, j - 1
        else:
            if table[i - 1][j] > table[i][j - 1]:
                i -= 1
            else:
                j -= 1
            if a_start != alen:
                emit = True
        if emit:
            ranges.append((a_start, a_end, b_start, b_end))
            a_start = alen
    return bytes(common), ranges
