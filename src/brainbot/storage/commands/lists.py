"""List commands: LPUSH/RPUSH, LPOP/RPOP, LRANGE, LINDEX, LLEN, LTRIM, LREM, LSET.

A list is one KV entry (a JSON array), read whole and written whole."""

from __future__ import annotations

import builtins
from typing import Any

from brainbot.errors import DataError, ResponseError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import index_range
from brainbot.storage.engine import Change, CommandFamily, KeyT, Out, ValueT, reads, writes


class ListCommands(CommandFamily):
    async def _push(self, name: KeyT, values: tuple[ValueT, ...], left: bool) -> int:
        if not values:
            raise DataError("wrong number of arguments for 'push' command")
        encoded = [self._engine.encode(v) for v in values]

        def change(item: Item | None) -> Change:
            item = item or Item("list", [])
            item.data = [*reversed(encoded), *item.data] if left else [*item.data, *encoded]
            return Change(len(item.data), item, True)

        return int(await self._engine.update(name, "list", change))

    @writes("name")
    async def lpush(self, name: KeyT, *values: ValueT) -> int:
        return await self._push(name, values, left=True)

    @writes("name")
    async def rpush(self, name: KeyT, *values: ValueT) -> int:
        return await self._push(name, values, left=False)

    async def _pop(
        self, name: KeyT, count: int | None, left: bool
    ) -> Out | builtins.list[Out] | None:
        out = self._engine.out

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(None, None, False)
            n = 1 if count is None else count
            if n < 0:
                raise ResponseError("value is out of range, must be positive")
            taken = item.data[:n] if left else item.data[::-1][:n]
            item.data = item.data[n:] if left else item.data[: len(item.data) - len(taken)]
            if count is None:
                return Change(out(taken[0]), item, True)
            return Change([out(v) for v in taken], item, bool(taken))

        return await self._engine.update(name, "list", change)

    @writes("name")
    async def lpop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        return await self._pop(name, count, left=True)

    @writes("name")
    async def rpop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        return await self._pop(name, count, left=False)

    @reads("name")
    async def lrange(self, name: KeyT, start: int, end: int) -> builtins.list[Out]:
        engine = self._engine
        item = await engine.read(engine.key(name), "list")
        if item is None:
            return []
        return [engine.out(item.data[i]) for i in index_range(len(item.data), start, end)]

    @reads("name")
    async def lindex(self, name: KeyT, index: int) -> Out | None:
        engine = self._engine
        item = await engine.read(engine.key(name), "list")
        if item is None or not -len(item.data) <= index < len(item.data):
            return None
        return engine.out(item.data[index])

    @reads("name")
    async def llen(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "list")
        return 0 if item is None else len(item.data)

    @writes("name")
    async def ltrim(self, name: KeyT, start: int, end: int) -> bool:
        def change(item: Item | None) -> Change:
            if item is None:
                return Change(True, None, False)
            kept = [item.data[i] for i in index_range(len(item.data), start, end)]
            changed = len(kept) != len(item.data)
            item.data = kept
            return Change(True, item, changed)

        return bool(await self._engine.update(name, "list", change))

    @writes("name")
    async def lrem(self, name: KeyT, count: int, value: ValueT) -> int:
        target = self._engine.encode(value)

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            data = item.data if count >= 0 else item.data[::-1]
            limit = abs(count) or len(data)
            kept: builtins.list[Any] = []
            removed = 0
            for element in data:
                if element == target and removed < limit:
                    removed += 1
                else:
                    kept.append(element)
            item.data = kept if count >= 0 else kept[::-1]
            return Change(removed, item, removed > 0)

        return int(await self._engine.update(name, "list", change))

    @writes("name")
    async def lset(self, name: KeyT, index: int, value: ValueT) -> bool:
        data = self._engine.encode(value)

        def change(item: Item | None) -> Change:
            if item is None:
                raise ResponseError("no such key")
            if not -len(item.data) <= index < len(item.data):
                raise ResponseError("index out of range")
            item.data[index] = data
            return Change(True, item, True)

        return bool(await self._engine.update(name, "list", change))
