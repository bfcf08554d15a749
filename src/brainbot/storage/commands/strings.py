"""String commands: GET, SET (with every option), counters, APPEND, MGET/MSET."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation

from brainbot.errors import DataError, ResponseError, WrongTypeError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import (
    INT64,
    INTEGER,
    AbsExpiryT,
    ExpiryT,
    expiry_from,
    format_float,
    int_amount,
)
from brainbot.storage.engine import Change, CommandFamily, KeyT, Out, ValueT, reads, writes


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
    ) -> Out | bool | None:
        engine = self._engine
        kvkey, data = engine.key(name), engine.encode(value)
        if sum(x is not None for x in (ex, px, exat, pxat)) + keepttl > 1:
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat`` and ``keepttl`` are mutually exclusive."
            )
        if nx and xx:
            raise DataError("``nx`` and ``xx`` are mutually exclusive.")
        now_ms = engine.now_ms()
        expire_ms = expiry_from(ex, px, exat, pxat, "set", now_ms)
        if expire_ms is not None:
            engine.check_requested_ttl(expire_ms, now_ms)
        if not (nx or xx or get or keepttl):  # a plain SET needs no read: 1 request
            async with engine.locked(kvkey):
                await engine.save(kvkey, Item("string", data, expire_ms))
            return True

        def change(old: Item | None) -> Change:
            if get and old is not None and old.type != "string":
                raise WrongTypeError
            previous = engine.out(old.data) if get and old is not None else None
            if (nx and old is not None) or (xx and old is None):
                return Change(previous if get else None, None, False)
            keep = old.expire_ms if keepttl and old is not None else expire_ms
            return Change(previous if get else True, Item("string", data, keep), True)

        return await engine.update(name, None, change)

    @writes("name")
    async def setnx(self, name: KeyT, value: ValueT) -> bool:
        return bool(await self.set(name, value, nx=True))

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
        names = [keys] if isinstance(keys, str | bytes | memoryview) else builtins.list(keys)
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
        async with engine.locked(*items):
            await engine.save_many(items)
        return True

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
            new = current + Decimal(repr(float(amount)))
            if not new.is_finite():
                raise ResponseError("increment would produce NaN or Infinity")
            return format_float(new)

        return float(await self._update_string(name, change))

    @writes("name")
    async def append(self, name: KeyT, value: ValueT) -> int:
        extra = self._engine.encode(value)
        return len(await self._update_string(name, lambda old: (old or b"") + extra))

    @reads("name")
    async def strlen(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "string")
        return 0 if item is None else len(item.data)
