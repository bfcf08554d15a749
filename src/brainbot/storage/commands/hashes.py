"""Hash commands: HSET, HGET, HMGET, HGETALL, HDEL, HEXISTS, HINCRBY, HKEYS, HVALS, HLEN.

A hash is one KV entry (a JSON object), read whole and written whole."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any

from brainbot.errors import DataError, ResponseError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import INT64, INTEGER, int_amount
from brainbot.storage.engine import Change, CommandFamily, KeyT, Out, ValueT, reads, writes


class HashCommands(CommandFamily):
    @writes("name")
    async def hset(
        self,
        name: KeyT,
        key: KeyT | None = None,
        value: ValueT | None = None,
        mapping: Mapping[KeyT, ValueT] | None = None,
        items: builtins.list[Any] | None = None,
    ) -> int:
        encode = self._engine.encode
        pairs: builtins.list[tuple[bytes, bytes]] = []
        if key is not None:
            if value is None:
                raise DataError("'hset' with 'key' needs a 'value'")
            pairs.append((encode(key), encode(value)))
        if mapping:
            pairs += [(encode(k), encode(v)) for k, v in mapping.items()]
        if items:
            pairs += [(encode(k), encode(v)) for k, v in zip(items[::2], items[1::2], strict=True)]
        if not pairs:
            raise DataError("'hset' with no key value pairs")

        def change(item: Item | None) -> Change:
            item = item or Item("hash", {})
            added = 0
            for field, data in pairs:
                added += field not in item.data
                item.data[field] = data
            return Change(added, item, True)

        return int(await self._engine.update(name, "hash", change))

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
        fields = [keys] if isinstance(keys, str | bytes | memoryview) else builtins.list(keys)
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
