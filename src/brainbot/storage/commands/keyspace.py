"""Keyspace commands: DEL, EXISTS, TYPE, KEYS/SCAN (by listing, without reading values),
RENAME, FLUSHDB."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator

from brainbot.errors import ResponseError
from brainbot.storage import codec
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import literal_prefix, redis_glob
from brainbot.storage.engine import Changes, CommandFamily, KeyT, Out, reads, writes


class KeyspaceCommands(CommandFamily):
    @writes("names")
    async def delete(self, *names: KeyT) -> int:
        engine = self._engine
        kvkeys = builtins.list(dict.fromkeys(engine.key(n) for n in names))

        def change(found: dict[str, Item | None]) -> Changes:
            # every named key is deleted: without a coordinator another process may have
            # written one this one reads as gone
            return Changes(sum(item is not None for item in found.values()), dict.fromkeys(found))

        return int(await engine.update_many(kvkeys, change))

    @reads("names")
    async def exists(self, *names: KeyT) -> int:
        engine = self._engine
        kvkeys = [engine.key(n) for n in names]
        found = await engine.read_many(kvkeys)
        return sum(found[k] is not None for k in kvkeys)

    @reads("name")
    async def type(self, name: KeyT) -> Out:
        engine = self._engine
        item = await engine.read(engine.key(name))
        return engine.out((item.type if item is not None else "none").encode())

    @reads()
    async def scan_iter(
        self, match: str | bytes | None = None, count: int | None = None, _type: str | None = None
    ) -> AsyncIterator[Out]:
        """Every live key matching the glob (and type), listed without reading values."""
        engine = self._engine
        pattern = match.decode("utf-8") if isinstance(match, bytes) else (match or "*")
        regex = redis_glob(pattern)
        kind = _type.lower() if _type else None
        now = engine.now_ms()
        skip = len(engine.prefix)
        async for info in engine.listing(
            engine.prefix + literal_prefix(pattern), page_size=max(10, min(count or 1000, 1000))
        ):
            expire_ms = codec.expiry_of(info.metadata)
            if (
                (expire_ms is None or expire_ms > now)
                and (kind is None or codec.type_of(info.metadata) == kind)
                and regex.match(info.name[skip:]) is not None
            ):
                yield engine.name_out(info.name)

    @reads(unordered=True)
    async def keys(self, pattern: str | bytes = "*") -> builtins.list[Out]:
        return [k async for k in self.scan_iter(match=pattern)]

    @writes("src", "dst")
    async def rename(self, src: KeyT, dst: KeyT) -> bool:
        engine = self._engine
        source, target = engine.key(src), engine.key(dst)

        def change(found: dict[str, Item | None]) -> Changes:
            item = found[source]
            if item is None:
                raise ResponseError("no such key")
            return Changes(True, {} if source == target else {target: item, source: None})

        return bool(await engine.update_many([source, target], change))

    @writes()
    async def flushdb(self, asynchronous: bool = False) -> bool:
        """Delete every key under this store's prefix (the whole namespace if it has none)."""
        engine = self._engine
        names = [info.name async for info in engine.listing(engine.prefix)]
        # also what this process remembers deleting (another process may have written it
        # since) and what is being written right now
        extra = [*engine.remembered(), *engine.busy_keys()]
        listed = set(names)
        names += [
            k for k in dict.fromkeys(extra) if k.startswith(engine.prefix) and k not in listed
        ]
        async with engine.locked(*names):  # writes under way finish first, none start
            if names:
                await engine.delete_keys(names, pace=False)
        return True
