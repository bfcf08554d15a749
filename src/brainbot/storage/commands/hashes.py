"""Hash commands: HSET, HSETNX, HMSET, HGET, HMGET, HGETALL, HDEL, HEXISTS, HINCRBY,
HINCRBYFLOAT, HKEYS, HVALS, HLEN, HSTRLEN, HRANDFIELD, HSCAN (and ``hscan_iter``), and
Redis 8's HGETEX/HSETEX without per-field expiry.

A hash is one KV entry (a JSON object), read whole and written whole. Its fields have no
TTL of their own (the entry has one expiry, the key's): HGETEX and HSETEX take their plain
forms, PERSIST, KEEPTTL and FNX/FXX, and refuse EX/PX/EXAT/PXAT."""

from __future__ import annotations

import builtins
import datetime as dt
import random
import re
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping
from decimal import Decimal
from typing import Any

from brainbot.errors import DataError, ResponseError, UnsupportedOperation
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import (
    INT64,
    INTEGER,
    int_amount,
    long_double_sum,
    redis_glob,
)
from brainbot.storage.commands.lists import LONG_MAX, NOT_AN_INTEGER, parse_long
from brainbot.storage.engine import Change, CommandFamily, KeyT, Out, ValueT, reads, writes

_DECIMAL = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_HEX = re.compile(
    rb"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?\Z"
)
_INFINITY = re.compile(rb"[+-]?inf(?:inity)?\Z", re.IGNORECASE)
_LONG_DOUBLE_MAX = Decimal("1.18973149535723176502e4932")
_CURSOR = re.compile(rb"(?:[+-]?[0-9]+)?\Z")


def redis_float(raw: bytes) -> Decimal | None:
    """A number as Redis's ``string2ld`` reads it (``strtold``: decimal, hex or infinity;
    no spaces, no NaN, nothing out of long double's range), or None."""
    if _INFINITY.match(raw):
        return Decimal("-inf") if raw.startswith(b"-") else Decimal("inf")
    if _DECIMAL.match(raw):
        value = Decimal(raw.decode("ascii"))
    elif _HEX.match(raw):
        try:
            value = Decimal(float.fromhex(raw.decode("ascii")))
        except OverflowError:  # past a double's range (a long double reaches further)
            return None
    else:
        return None
    if abs(value) >= _LONG_DOUBLE_MAX or (value and value.adjusted() < -4951):
        return None  # strtold's ERANGE: overflow, or underflow to zero
    return value


def _one_at_most(*given: object) -> bool:
    return sum(bool(g) for g in given) <= 1


def _check_expiry_types(ex: Any, px: Any) -> None:
    """What redis-py refuses before sending an expiry (``extract_expire_flags``)."""
    if ex is not None and not (
        isinstance(ex, dt.timedelta | int) or (isinstance(ex, str) and ex.isdigit())
    ):
        raise DataError("ex must be datetime.timedelta or int")
    if ex is None and px is not None and not isinstance(px, dt.timedelta | int):
        raise DataError("px must be datetime.timedelta or int")


def _no_field_ttl(command: str, option: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"{command} {option} is not supported on KV: hash fields have no TTL of their own "
        "(a hash is one KV entry with one expiry, the key's); use EXPIRE on the whole key, "
        f"or {command} without EX/PX/EXAT/PXAT"
    )


class HashCommands(CommandFamily):
    def _pairs(
        self,
        command: str,
        key: KeyT | None,
        value: ValueT | None,
        mapping: Mapping[KeyT, ValueT] | None,
        items: builtins.list[Any] | None,
    ) -> builtins.list[tuple[bytes, bytes]]:
        """Field/value pairs in the order redis-py sends them (items, key, mapping: the
        last of a repeated field wins)."""
        encode = self._engine.encode
        flat: builtins.list[Any] = [*(items or ())]
        if key is not None:
            flat += [key, value]
        for pair in (mapping or {}).items():
            flat += pair
        encoded = [encode(x) for x in flat]  # redis-py's encoder refuses first
        if len(encoded) % 2:
            raise ResponseError(f"wrong number of arguments for '{command}' command")
        return builtins.list(zip(encoded[::2], encoded[1::2], strict=True))

    @writes("name")
    async def hset(
        self,
        name: KeyT,
        key: KeyT | None = None,
        value: ValueT | None = None,
        mapping: Mapping[KeyT, ValueT] | None = None,
        items: builtins.list[Any] | None = None,
    ) -> int:
        if key is None and not mapping and not items:
            raise DataError("'hset' with no key value pairs")
        pairs = self._pairs("hset", key, value, mapping, items)

        def change(item: Item | None) -> Change:
            item = item or Item("hash", {})
            added = 0
            for field, data in pairs:
                added += field not in item.data
                item.data[field] = data
            return Change(added, item, True)

        return int(await self._engine.update(name, "hash", change))

    @writes("name")
    async def hsetnx(self, name: KeyT, key: KeyT, value: ValueT) -> int:
        """Set the field only if it is absent: 1 if it was set, 0 (nothing written) if not."""
        field, data = self._engine.encode(key), self._engine.encode(value)

        def change(item: Item | None) -> Change:
            if item is not None and field in item.data:
                return Change(0, None, False)
            item = item or Item("hash", {})
            item.data[field] = data
            return Change(1, item, True)

        return int(await self._engine.update(name, "hash", change))

    @writes("name")
    async def hmset(self, name: KeyT, mapping: Mapping[KeyT, ValueT]) -> bool:
        """HSET of a mapping answering True (deprecated in redis-py, which warns likewise)."""
        warnings.warn(
            "Call to deprecated hmset. (Use 'hset' instead.) -- Deprecated since version 4.0.0.",
            DeprecationWarning,
            stacklevel=2,
        )
        if not mapping:
            raise DataError("'hmset' with 'mapping' of length 0")
        await self.hset(name, mapping=mapping)
        return True

    @reads("name")
    async def hget(self, name: KeyT, key: KeyT) -> Out | None:
        engine = self._engine
        item = await engine.read(engine.key(name), "hash")
        value = None if item is None else item.data.get(engine.encode(key))
        return None if value is None else engine.out(value)

    @reads("name")
    async def hmget(
        self, name: KeyT, keys: KeyT | Iterable[KeyT], *args: KeyT
    ) -> builtins.list[Out | None]:
        engine = self._engine
        one = isinstance(keys, str | bytes | bytearray | memoryview | int | float)
        fields = [keys] if one else builtins.list(keys)
        item = await engine.read(engine.key(name), "hash")
        data = {} if item is None else item.data
        return [
            None if (v := data.get(engine.encode(f))) is None else engine.out(v)
            for f in [*fields, *args]
        ]

    @reads("name")
    async def hgetall(self, name: KeyT) -> dict[Out, Out]:
        engine = self._engine
        item = await engine.read(engine.key(name), "hash")
        return {} if item is None else {engine.out(k): engine.out(v) for k, v in item.data.items()}

    @writes("name")
    async def hdel(self, name: KeyT, *keys: KeyT) -> int:
        fields = {self._engine.encode(k) for k in keys}

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            removed = sum(item.data.pop(f, None) is not None for f in fields)
            return Change(removed, item, removed > 0)

        return int(await self._engine.update(name, "hash", change))

    @reads("name")
    async def hexists(self, name: KeyT, key: KeyT) -> bool:
        engine = self._engine
        item = await engine.read(engine.key(name), "hash")
        return item is not None and engine.encode(key) in item.data

    @writes("name")
    async def hincrby(self, name: KeyT, key: KeyT, amount: int = 1) -> int:
        field = self._engine.encode(key)
        amount = int_amount(amount)

        def change(item: Item | None) -> Change:
            item = item or Item("hash", {})
            old = item.data.get(field)
            if old is not None and not INTEGER.match(old):
                raise ResponseError("hash value is not an integer")
            new = (0 if old is None else int(old)) + int(amount)
            if not INT64[0] <= new <= INT64[1]:
                raise ResponseError("increment or decrement would overflow")
            item.data[field] = str(new).encode()
            return Change(new, item, True)

        return int(await self._engine.update(name, "hash", change))

    @writes("name")
    async def hincrbyfloat(self, name: KeyT, key: KeyT, amount: float = 1.0) -> float:
        """Add ``amount`` to the field as Redis does (stored as INCRBYFLOAT's text)."""
        field = self._engine.encode(key)
        increment = redis_float(self._engine.encode(amount))
        if increment is None:
            raise ResponseError("value is not a valid float")
        if not increment.is_finite():
            raise ResponseError("value is NaN or Infinity")

        def change(item: Item | None) -> Change:
            item = item or Item("hash", {})
            old = item.data.get(field)
            current = Decimal(0) if old is None else redis_float(old)
            if current is None:
                raise ResponseError("hash value is not a float")
            text = long_double_sum(current, increment) if current.is_finite() else None
            if text is None:
                raise ResponseError("increment would produce NaN or Infinity")
            item.data[field] = text
            return Change(text, item, True)

        return float(await self._engine.update(name, "hash", change))

    @reads("name", unordered=True)
    async def hkeys(self, name: KeyT) -> builtins.list[Out]:
        engine = self._engine
        item = await engine.read(engine.key(name), "hash")
        return [] if item is None else [engine.out(k) for k in item.data]

    @reads("name", unordered=True)
    async def hvals(self, name: KeyT) -> builtins.list[Out]:
        engine = self._engine
        item = await engine.read(engine.key(name), "hash")
        return [] if item is None else [engine.out(v) for v in item.data.values()]

    @reads("name")
    async def hlen(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "hash")
        return 0 if item is None else len(item.data)

    @reads("name")
    async def hstrlen(self, name: KeyT, key: KeyT) -> int:
        engine = self._engine
        item = await engine.read(engine.key(name), "hash")
        value = None if item is None else item.data.get(engine.encode(key))
        return 0 if value is None else len(value)

    @reads("key", own=True)
    async def hrandfield(
        self, key: KeyT, count: int | None = None, withvalues: bool = False
    ) -> Out | builtins.list[Out] | None:
        """Random fields: one (or None) without ``count``; else up to ``count`` distinct
        ones (the whole hash, in order, if it has no more), or ``-count`` with repeats;
        ``withvalues`` answers them as a flat [field, value, ...] list, as redis-py does."""
        engine = self._engine
        if count is None:
            if withvalues:  # redis-py sends WITHVALUES where the count goes
                raise ResponseError(NOT_AN_INTEGER)
            item = await engine.read(engine.key(key), "hash")
            return None if item is None else engine.out(random.choice(builtins.list(item.data)))
        n = parse_long(engine.encode(count), -LONG_MAX, LONG_MAX)
        if withvalues and not -(LONG_MAX // 2) <= n <= LONG_MAX // 2:
            raise ResponseError("value is out of range")
        item = await engine.read(engine.key(key), "hash")
        if item is None or n == 0:
            return []
        fields = builtins.list(item.data)
        if n < 0:
            picked = random.choices(fields, k=-n)
        else:
            picked = fields if n >= len(fields) else random.sample(fields, n)
        if not withvalues:
            return [engine.out(f) for f in picked]
        return [engine.out(x) for f in picked for x in (f, item.data[f])]

    @reads("name", own=True)
    async def hscan(
        self,
        name: KeyT,
        cursor: int = 0,
        match: str | bytes | None = None,
        count: int | None = None,
        no_values: bool | None = None,
    ) -> tuple[int, dict[Out, Out] | builtins.list[Out]]:
        """Every field matching ``match`` in one page, with cursor 0 (as Redis answers a
        small hash; ``count`` is a hint Redis ignores there too). With ``no_values`` the
        fields only (Redis 7.4's NOVALUES; ``no_values=False`` asks for the values)."""
        engine = self._engine
        raw = engine.encode(cursor)
        if not _CURSOR.match(raw) or abs(int(raw or b"0")) >= 2**64:
            raise ResponseError("invalid cursor")
        pattern = None if match is None else engine.encode(match)
        hint = None if count is None else engine.encode(count)
        item = await engine.read(engine.key(name), "hash")
        if item is None:  # Redis answers an empty scan before it reads the options
            return 0, [] if no_values else {}
        if hint is not None and parse_long(hint) < 1:
            raise ResponseError("syntax error")
        fields = builtins.list(item.data)
        if pattern is not None:
            regex = redis_glob(pattern.decode("latin-1"))  # byte-wise, as Redis matches
            fields = [f for f in fields if regex.match(f.decode("latin-1"))]
        if no_values:
            return 0, [engine.out(f) for f in fields]
        return 0, {engine.out(f): engine.out(item.data[f]) for f in fields}

    @reads("name")
    async def hscan_iter(
        self,
        name: KeyT,
        match: str | bytes | None = None,
        count: int | None = None,
        no_values: bool | None = None,
    ) -> AsyncIterator[Any]:
        """Every matching field (``no_values``) or (field, value) pair, as redis-py yields."""
        _, data = await self.hscan(name, 0, match=match, count=count, no_values=no_values)
        for entry in data if isinstance(data, builtins.list) else data.items():
            yield entry

    @writes("name")
    async def hgetex(
        self,
        name: KeyT,
        *keys: KeyT,
        ex: Any = None,
        px: Any = None,
        exat: Any = None,
        pxat: Any = None,
        persist: bool = False,
    ) -> builtins.list[Out | None]:
        """Redis 8's HGETEX: the values (None for absent fields). PERSIST has nothing to
        remove (fields never carry a TTL here); EX/PX/EXAT/PXAT are refused."""
        if not keys:
            raise DataError("'hgetex' should have at least one key provided")
        if not _one_at_most(*(x is not None for x in (ex, px, exat, pxat)), persist):
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat``, and ``persist`` are mutually exclusive."
            )
        _check_expiry_types(ex, px)
        for k in keys:
            self._engine.encode(k)  # what redis-py's encoder refuses, it refuses first
        for option, given in (("EX", ex), ("PX", px), ("EXAT", exat), ("PXAT", pxat)):
            if given is not None:
                raise _no_field_ttl("HGETEX", option)
        return await self.hmget(name, builtins.list(keys))

    @writes("name")
    async def hsetex(
        self,
        name: KeyT,
        key: KeyT | None = None,
        value: ValueT | None = None,
        mapping: Mapping[KeyT, ValueT] | None = None,
        items: builtins.list[Any] | None = None,
        ex: Any = None,
        px: Any = None,
        exat: Any = None,
        pxat: Any = None,
        data_persist_option: Any = None,
        keepttl: bool = False,
    ) -> int:
        """Redis 8's HSETEX: set every field (1), or none (0) when FNX finds one of them or
        FXX misses one. KEEPTTL keeps nothing (fields never carry a TTL here); EX/PX/EXAT/
        PXAT are refused. ``data_persist_option`` is redis-py's ``HashDataPersistOptions``
        (or its text)."""
        if key is None and not mapping and not items:
            raise DataError("'hsetex' with no key value pairs")
        if items and len(items) % 2 != 0:
            raise DataError(
                "'hsetex' with odd number of items. 'items' must contain a list of key/value pairs."
            )
        if not _one_at_most(*(x is not None for x in (ex, px, exat, pxat)), keepttl):
            raise DataError(
                "``ex``, ``px``, ``exat``, ``pxat``, and ``keepttl`` are mutually exclusive."
            )
        _check_expiry_types(ex, px)
        pairs = self._pairs("hsetex", key, value, mapping, items)
        condition = b""
        if data_persist_option:
            text = self._engine.encode(getattr(data_persist_option, "value", data_persist_option))
            condition = text.upper()
            if condition not in (b"FNX", b"FXX"):
                raise ResponseError(f"unknown argument: {text.decode(errors='replace')}")
        for option, given in (("EX", ex), ("PX", px), ("EXAT", exat), ("PXAT", pxat)):
            if given is not None:
                raise _no_field_ttl("HSETEX", option)

        def change(item: Item | None) -> Change:
            data = {} if item is None else item.data
            present = [field in data for field, _ in pairs]
            if (condition == b"FNX" and any(present)) or (condition == b"FXX" and not all(present)):
                return Change(0, None, False)
            item = item or Item("hash", {})
            for field, new in pairs:
                item.data[field] = new
            return Change(1, item, True)

        return int(await self._engine.update(name, "hash", change))
