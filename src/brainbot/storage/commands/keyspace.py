"""Keyspace commands: DEL, UNLINK, EXISTS, TYPE, KEYS/SCAN/RANDOMKEY (by listing, without
reading values), RENAME, RENAMENX, COPY, FLUSHDB.

**SCAN's cursor** is the KV namespace's own list cursor (its UTF-8 text after a 0x01 byte,
read as a big-endian integer; 0 starts and ends a scan). Each SCAN call is one list request
of ``count`` names (10 by default, as Redis; KV lists 10 to 1000 at a time); like Redis's,
a batch may hold fewer keys than ``count`` (expired ones, or ones ``match``/``_type``
leave out), even none before the end. Pass the same ``match`` on every call: the cursor
belongs to the listing of the pattern's literal prefix. Cursors are large integers (from
dozens to a few thousand digits), which Python handles; they mean nothing to Redis, nor
Redis's to KV. A cursor KV did not hand out is ``ResponseError("invalid cursor")``."""

from __future__ import annotations

import builtins
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from brainbot.errors import InvalidCursor, ResponseError, UnsupportedOperation
from brainbot.kv.limits import MAX_LIST_LIMIT, MIN_LIST_LIMIT
from brainbot.kv.namespace import KeyInfo
from brainbot.storage import codec
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import encodable, literal_prefix, redis_glob, redis_int
from brainbot.storage.engine import Changes, CommandFamily, KeyT, Out, reads, writes

_CURSOR_MARK = b"\x01"  # keeps a cursor's leading bytes, and no KV cursor reads as 0


def cursor_int(kvcursor: str | None) -> int:
    """The SCAN cursor for a KV list cursor (None, the end of the listing: 0)."""
    if kvcursor is None:
        return 0
    return int.from_bytes(_CURSOR_MARK + kvcursor.encode("utf-8"), "big")


def kv_cursor(cursor: object) -> str | None:
    """The KV list cursor a SCAN cursor stands for (0: the start of the listing)."""
    encodable(cursor)
    number = -1
    if isinstance(cursor, int):
        number = cursor
    elif isinstance(cursor, str | bytes | bytearray | memoryview):
        digits = cursor.encode("utf-8", "replace") if isinstance(cursor, str) else bytes(cursor)
        try:
            number = int(digits) if digits.isdigit() else -1
        except ValueError:  # more digits than Python reads from text (sys.int_info)
            number = -1
    if number == 0:
        return None
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big") if number > 0 else b""
    if not raw.startswith(_CURSOR_MARK):
        raise ResponseError("invalid cursor")
    try:
        return raw[len(_CURSOR_MARK) :].decode("utf-8")
    except UnicodeDecodeError:
        raise ResponseError("invalid cursor") from None


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

    @writes("names")
    async def unlink(self, *names: KeyT) -> int:
        """DEL: KV frees nothing in the background, so the two are the same."""
        return await self.delete(*names)

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

    def _keeps(
        self, match: str | bytes | None, _type: str | None
    ) -> tuple[str, Callable[[KeyInfo], bool]]:
        """The KV prefix to list for SCAN's ``match``, and which listed names it keeps:
        live ones matching the glob and, with ``_type``, of that type."""
        engine = self._engine
        if isinstance(match, bytes | bytearray | memoryview):
            match = bytes(match).decode("utf-8")
        pattern = match or "*"
        regex = redis_glob(pattern)
        kind = _type.lower() if _type else None
        now = engine.now_ms()
        skip = len(engine.prefix)

        def keep(info: KeyInfo) -> bool:
            expire_ms = codec.expiry_of(info.metadata)
            return (
                (expire_ms is None or expire_ms > now)
                and (kind is None or codec.type_of(info.metadata) == kind)
                and regex.match(info.name[skip:]) is not None
            )

        return engine.prefix + literal_prefix(pattern), keep

    @reads(own=True)
    async def scan(
        self,
        cursor: int = 0,
        match: str | bytes | None = None,
        count: int | None = None,
        _type: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, builtins.list[Out]]:
        """One batch of keys and the cursor of the next (0: done); see the module's notes.
        ``kwargs`` are redis-py's options for its connection, meaningless here."""
        kvcursor = kv_cursor(cursor)
        limit = MIN_LIST_LIMIT
        if count is not None:
            limit = redis_int(count)
            if limit < 1:
                raise ResponseError("syntax error")
        prefix, keep = self._keeps(match, _type)
        engine = self._engine
        try:
            page = await engine.namespace.list(
                prefix=prefix,
                cursor=kvcursor,
                limit=min(max(limit, MIN_LIST_LIMIT), MAX_LIST_LIMIT),
            )
        except InvalidCursor:
            raise ResponseError("invalid cursor") from None
        return cursor_int(page.cursor), [engine.name_out(i.name) for i in page.keys if keep(i)]

    @reads()
    async def scan_iter(
        self, match: str | bytes | None = None, count: int | None = None, _type: str | None = None
    ) -> AsyncIterator[Out]:
        """Every live key matching the glob (and type), listed without reading values."""
        engine = self._engine
        prefix, keep = self._keeps(match, _type)
        async for info in engine.listing(prefix, page_size=max(10, min(count or 1000, 1000))):
            if keep(info):
                yield engine.name_out(info.name)

    @reads(own=True)
    async def randomkey(self, **kwargs: Any) -> Out | None:
        """A random live key, None if there is none. It is drawn from the first list page
        (1,000 names, in KV's order) holding a live key: one list request, as RANDOMKEY is
        O(1) in Redis, at the price of never drawing keys past that page."""
        engine = self._engine
        prefix, keep = self._keeps(None, None)
        kvcursor: str | None = None
        while True:
            page = await engine.namespace.list(prefix=prefix, cursor=kvcursor, limit=MAX_LIST_LIMIT)
            live = [info.name for info in page.keys if keep(info)]
            if live:
                return engine.name_out(random.choice(live))
            if page.cursor is None:
                return None
            kvcursor = page.cursor

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

    @writes("src", "dst")
    async def renamenx(self, src: KeyT, dst: KeyT) -> bool:
        """RENAME unless ``dst`` exists (one transaction over both keys)."""
        engine = self._engine
        source, target = engine.key(src), engine.key(dst)

        def change(found: dict[str, Item | None]) -> Changes:
            item = found[source]
            if item is None:
                raise ResponseError("no such key")
            if source == target or found[target] is not None:
                return Changes(False, {})
            return Changes(True, {target: item, source: None})

        return bool(await engine.update_many([source, target], change))

    @writes("source", "destination")
    async def copy(
        self,
        source: KeyT,
        destination: KeyT,
        destination_db: str | None = None,
        replace: bool = False,
    ) -> bool:
        """Copy a value and its TTL (one transaction over both keys). A store is one
        keyspace: there is no other database to copy to."""
        if destination_db is not None:
            raise UnsupportedOperation(
                "copy: KVStore has one database; destination_db must be None."
            )
        engine = self._engine
        origin, target = engine.key(source), engine.key(destination)
        if origin == target:
            raise ResponseError("source and destination objects are the same")

        def change(found: dict[str, Item | None]) -> Changes:
            item = found[origin]
            if item is None or (found[target] is not None and not replace):
                return Changes(False, {})
            return Changes(True, {target: codec.copy(item)})

        return bool(await engine.update_many([origin, target], change))

    @writes()
    async def flushall(self, asynchronous: bool = False, **kwargs: Any) -> bool:
        """FLUSHALL: a KV namespace is one keyspace, so the same as FLUSHDB (the keys under
        this store's prefix); never anything else in the namespace."""
        return await self.flushdb(asynchronous)

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
