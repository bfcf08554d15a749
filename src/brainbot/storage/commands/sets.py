"""Set commands: SADD, SREM, SMEMBERS, SISMEMBER, SCARD.

A set is one KV entry (a sorted JSON array), read whole and written whole."""

from __future__ import annotations

import builtins

from brainbot.storage.codec import Item
from brainbot.storage.engine import Change, CommandFamily, KeyT, Out, ValueT, reads, writes


class SetCommands(CommandFamily):
    @writes("name")
    async def sadd(self, name: KeyT, *values: ValueT) -> int:
        members = [self._engine.encode(v) for v in values]

        def change(item: Item | None) -> Change:
            item = item or Item("set", set())
            before = len(item.data)
            item.data.update(members)
            return Change(len(item.data) - before, item, len(item.data) != before)

        return int(await self._engine.update(name, "set", change))

    @writes("name")
    async def srem(self, name: KeyT, *values: ValueT) -> int:
        members = {self._engine.encode(v) for v in values}

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            removed = len(item.data & members)
            item.data -= members
            return Change(removed, item, removed > 0)

        return int(await self._engine.update(name, "set", change))

    @reads("name")
    async def smembers(self, name: KeyT) -> builtins.set[Out]:
        engine = self._engine
        item = await engine.read(engine.key(name), "set")
        return set() if item is None else {engine.out(m) for m in item.data}

    @reads("name")
    async def sismember(self, name: KeyT, value: ValueT) -> int:
        engine = self._engine
        item = await engine.read(engine.key(name), "set")
        return int(item is not None and engine.encode(value) in item.data)

    @reads("name")
    async def scard(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "set")
        return 0 if item is None else len(item.data)
