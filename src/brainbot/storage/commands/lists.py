"""List commands: LPUSH/RPUSH, LPUSHX/RPUSHX, LPOP/RPOP, LMPOP, LMOVE, RPOPLPUSH, LINSERT,
LPOS, LRANGE, LINDEX, LLEN, LTRIM, LREM, LSET; the blocking ones (BLPOP, BRPOP, BRPOPLPUSH,
BLMOVE, BLMPOP) are refused with UnsupportedOperation.

A list is one KV entry (a JSON array), read whole and written whole. Arguments Redis parses
as integers (indexes, counts) are taken as redis-py sends them: an int, or its text."""

from __future__ import annotations

import builtins
from typing import Any

from brainbot.errors import ResponseError, UnsupportedOperation, WrongTypeError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import INT64, INTEGER, index_range
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

NOT_AN_INTEGER = "value is not an integer or out of range"
LONG_MAX = INT64[1]


def parse_long(
    raw: bytes, low: int = INT64[0], high: int = LONG_MAX, error: str | None = None
) -> int:
    """An integer argument as Redis parses it (``string2ll``: no ``+``, no leading zeros, no
    spaces), within ``[low, high]``; Redis's own error text otherwise (``error`` when the
    command gives one, as ``getRangeLongFromObjectOrReply`` does)."""
    if not INTEGER.match(raw) or not INT64[0] <= (value := int(raw)) <= INT64[1]:
        raise ResponseError(error or NOT_AN_INTEGER)
    if not low <= value <= high:
        raise ResponseError(error or f"value is out of range, value must between {low} and {high}")
    return value


def _blocking(command: str, instead: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"{command} is not supported on KV: polling would spend KV's 1 write/s per key and "
        f"the API budget; use {instead} (and your own wait) instead"
    )


def _take(data: builtins.list[bytes], n: int, left: bool) -> tuple[builtins.list[bytes], Any]:
    """Up to ``n`` elements popped from one end (in pop order), and what remains."""
    if left:
        return data[:n], data[n:]
    taken = data[::-1][:n]
    return taken, data[: len(data) - len(taken)]


class ListCommands(CommandFamily):
    def _long(self, value: Any, **bounds: Any) -> int:
        return parse_long(self._engine.encode(value), **bounds)

    def _side(self, where: Any) -> bool:
        """LEFT (True) or RIGHT (False), in any case, as Redis reads LMOVE/LMPOP's sides."""
        side = self._engine.encode(where).upper()
        if side not in (b"LEFT", b"RIGHT"):
            raise ResponseError("syntax error")
        return side == b"LEFT"

    async def _push(
        self, command: str, name: KeyT, values: tuple[ValueT, ...], left: bool, exists: bool
    ) -> int:
        if not values:
            raise ResponseError(f"wrong number of arguments for '{command}' command")
        encoded = [self._engine.encode(v) for v in values]

        def change(item: Item | None) -> Change:
            if item is None and exists:
                return Change(0, None, False)
            item = item or Item("list", [])
            item.data = [*reversed(encoded), *item.data] if left else [*item.data, *encoded]
            return Change(len(item.data), item, True)

        return int(await self._engine.update(name, "list", change))

    @writes("name")
    async def lpush(self, name: KeyT, *values: ValueT) -> int:
        return await self._push("lpush", name, values, left=True, exists=False)

    @writes("name")
    async def rpush(self, name: KeyT, *values: ValueT) -> int:
        return await self._push("rpush", name, values, left=False, exists=False)

    @writes("name")
    async def lpushx(self, name: KeyT, *values: ValueT) -> int:
        """LPUSH only onto a list that exists (0, and nothing written, otherwise)."""
        return await self._push("lpushx", name, values, left=True, exists=True)

    @writes("name")
    async def rpushx(self, name: KeyT, *values: ValueT) -> int:
        """RPUSH only onto a list that exists (0, and nothing written, otherwise)."""
        return await self._push("rpushx", name, values, left=False, exists=True)

    async def _pop(
        self, name: KeyT, count: int | None, left: bool
    ) -> Out | builtins.list[Out] | None:
        out = self._engine.out
        # parsed before the key is looked at, as Redis does
        n = (
            None
            if count is None
            else self._long(count, low=0, error="value is out of range, must be positive")
        )

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(None, None, False)
            taken, rest = _take(item.data, 1 if n is None else n, left)
            item.data = rest
            if n is None:
                return Change(out(taken[0]), item, True)
            return Change([out(v) for v in taken], item, bool(taken))

        return await self._engine.update(name, "list", change)

    @writes("name")
    async def lpop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        return await self._pop(name, count, left=True)

    @writes("name")
    async def rpop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        return await self._pop(name, count, left=False)

    @writes("args")
    async def lmpop(
        self, num_keys: int, *args: KeyT, direction: str, count: int | None = 1
    ) -> builtins.list[Any] | None:
        """Pop from the first non-empty list of ``args``: ``[key, [elements]]``, or None.
        The arguments are read as Redis reads what redis-py sends (numkeys, keys, side,
        COUNT), so a ``num_keys`` that disagrees with the keys fails as it does on Redis."""
        engine = self._engine
        raw: builtins.list[Any] = [num_keys, *args, direction]
        if count != 1:
            raw += ["COUNT", count]
        argv = [engine.encode(a) for a in raw]
        if len(argv) < 3:
            raise ResponseError("wrong number of arguments for 'lmpop' command")
        numkeys = parse_long(argv[0], 1, LONG_MAX, "numkeys should be greater than 0")
        where = numkeys + 1
        if where >= len(argv):
            raise ResponseError("syntax error")
        left = self._side(argv[where])
        n: int | None = None
        rest = argv[where + 1 :]
        while rest:
            if n is None and rest[0].upper() == b"COUNT" and len(rest) > 1:
                n = parse_long(rest[1], 1, LONG_MAX, "count should be greater than 0")
                rest = rest[2:]
            else:
                raise ResponseError("syntax error")
        kvkeys = [engine.key(k) for k in raw[1:where]]

        def change(found: dict[str, Item | None]) -> Changes:
            for kvkey in kvkeys:  # in order; a key after the first non-empty one is not read
                item = found[kvkey]
                if item is None:
                    continue
                if item.type != "list":
                    raise WrongTypeError
                taken, kept = _take(item.data, n or 1, left)
                popped = [engine.name_out(kvkey), [engine.out(v) for v in taken]]
                return Changes(popped, {kvkey: Item("list", kept, item.expire_ms)})
            return Changes(None, {})

        return await engine.update_many(kvkeys, change)  # type: ignore[no-any-return]

    @writes("first_list", "second_list")
    async def lmove(
        self, first_list: KeyT, second_list: KeyT, src: str = "LEFT", dest: str = "RIGHT"
    ) -> Out | None:
        """Pop from one end of ``first_list`` and push onto one end of ``second_list``
        (the same list rotates), atomically."""
        engine = self._engine
        from_left, to_left = self._side(src), self._side(dest)
        source, target = engine.key(first_list), engine.key(second_list)

        def change(found: dict[str, Item | None]) -> Changes:
            item = found[source]
            if item is None:
                return Changes(None, {})  # the destination is not even checked, as in Redis
            if item.type != "list":
                raise WrongTypeError
            dst = found[target]
            if dst is not None and dst.type != "list":
                raise WrongTypeError
            data = builtins.list(item.data)
            element = data.pop(0 if from_left else -1)
            if source == target:  # a rotation
                data.insert(0 if to_left else len(data), element)
                return Changes(engine.out(element), {source: Item("list", data, item.expire_ms)})
            pushed = [] if dst is None else builtins.list(dst.data)
            pushed.insert(0 if to_left else len(pushed), element)
            return Changes(
                engine.out(element),
                {
                    source: Item("list", data, item.expire_ms),
                    target: Item("list", pushed, None if dst is None else dst.expire_ms),
                },
            )

        return await engine.update_many([source, target], change)

    @writes("src", "dst")
    async def rpoplpush(self, src: KeyT, dst: KeyT) -> Out | None:
        return await self.lmove(src, dst, "RIGHT", "LEFT")

    @writes("name")
    async def linsert(self, name: KeyT, where: str, refvalue: ValueT, value: ValueT) -> int:
        """Insert before or after the first ``refvalue``: the new length, -1 if ``refvalue``
        is not there, 0 if the list does not exist."""
        engine = self._engine
        side = engine.encode(where).upper()
        if side not in (b"BEFORE", b"AFTER"):
            raise ResponseError("syntax error")
        pivot, data = engine.encode(refvalue), engine.encode(value)

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            if pivot not in item.data:
                return Change(-1, None, False)
            at = item.data.index(pivot) + (side == b"AFTER")
            item.data = [*item.data[:at], data, *item.data[at:]]
            return Change(len(item.data), item, True)

        return int(await engine.update(name, "list", change))

    @reads("name")
    async def lpos(
        self,
        name: KeyT,
        value: ValueT,
        rank: int | None = None,
        count: int | None = None,
        maxlen: int | None = None,
    ) -> int | builtins.list[int] | None:
        """Index(es) of ``value``: from the ``rank``-th match (negative: from the tail),
        ``count`` of them (0: all), looking at no more than ``maxlen`` elements (0: all)."""
        engine = self._engine
        target = engine.encode(value)
        skip, backwards = 0, False
        if rank is not None:
            r = self._long(rank)
            if r == 0:
                raise ResponseError(
                    "RANK can't be zero: use 1 to start from the first match, 2 from the "
                    "second ... or use negative to start from the end of the list"
                )
            skip, backwards = abs(r) - 1, r < 0
        wanted = (
            None if count is None else self._long(count, low=0, error="COUNT can't be negative")
        )
        limit = 0 if maxlen is None else self._long(maxlen, low=0, error="MAXLEN can't be negative")
        item = await engine.read(engine.key(name), "list")
        data = [] if item is None else item.data
        order = range(len(data) - 1, -1, -1) if backwards else range(len(data))
        found: builtins.list[int] = []
        for scanned, i in enumerate(order):
            if limit and scanned >= limit:
                break
            if data[i] != target:
                continue
            if skip:
                skip -= 1
                continue
            found.append(i)
            if wanted is None or (wanted and len(found) >= wanted):  # COUNT 0: every match
                break
        if wanted is None:
            return found[0] if found else None
        return found

    @reads("name")
    async def lrange(self, name: KeyT, start: int, end: int) -> builtins.list[Out]:
        engine = self._engine
        first, last = self._long(start), self._long(end)
        item = await engine.read(engine.key(name), "list")
        if item is None:
            return []
        return [engine.out(item.data[i]) for i in index_range(len(item.data), first, last)]

    @reads("name")
    async def lindex(self, name: KeyT, index: int) -> Out | None:
        engine = self._engine
        raw = engine.encode(index)
        item = await engine.read(engine.key(name), "list")
        if item is None:  # Redis looks the key up before it parses the index
            return None
        i = parse_long(raw)
        if not -len(item.data) <= i < len(item.data):
            return None
        return engine.out(item.data[i])

    @reads("name")
    async def llen(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "list")
        return 0 if item is None else len(item.data)

    @writes("name")
    async def ltrim(self, name: KeyT, start: int, end: int) -> bool:
        first, last = self._long(start), self._long(end)

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(True, None, False)
            kept = [item.data[i] for i in index_range(len(item.data), first, last)]
            changed = len(kept) != len(item.data)
            item.data = kept
            return Change(True, item, changed)

        return bool(await self._engine.update(name, "list", change))

    @writes("name")
    async def lrem(self, name: KeyT, count: int, value: ValueT) -> int:
        limit_count = self._long(count)
        target = self._engine.encode(value)

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            data = item.data if limit_count >= 0 else item.data[::-1]
            limit = abs(limit_count) or len(data)
            kept: builtins.list[Any] = []
            removed = 0
            for element in data:
                if element == target and removed < limit:
                    removed += 1
                else:
                    kept.append(element)
            item.data = kept if limit_count >= 0 else kept[::-1]
            return Change(removed, item, removed > 0)

        return int(await self._engine.update(name, "list", change))

    @writes("name")
    async def lset(self, name: KeyT, index: int, value: ValueT) -> bool:
        raw, data = self._engine.encode(index), self._engine.encode(value)

        def change(item: Item | None) -> Change:
            if item is None:  # Redis looks the key up before it parses the index
                raise ResponseError("no such key")
            i = parse_long(raw)
            if not -len(item.data) <= i < len(item.data):
                raise ResponseError("index out of range")
            item.data[i] = data
            return Change(True, item, True)

        return bool(await self._engine.update(name, "list", change))

    # -- blocking commands: refused ------------------------------------------------------
    # KV has no notifications: waiting for a push would mean polling, each poll a request
    # against the API budget for as long as the caller waits. They keep redis-py's
    # signatures so that ported code fails at once, with the message naming what to use.

    @writes("keys")
    async def blpop(self, keys: Any, timeout: float | None = 0) -> Any:  # noqa: ASYNC109
        raise _blocking("BLPOP", "LPOP")

    @writes("keys")
    async def brpop(self, keys: Any, timeout: float | None = 0) -> Any:  # noqa: ASYNC109
        raise _blocking("BRPOP", "RPOP")

    @writes("src", "dst")
    async def brpoplpush(
        self,
        src: KeyT,
        dst: KeyT,
        timeout: float | None = 0,  # noqa: ASYNC109 - redis-py's signature
    ) -> Any:
        raise _blocking("BRPOPLPUSH", "RPOPLPUSH or LMOVE")

    @writes("first_list", "second_list")
    async def blmove(
        self,
        first_list: KeyT,
        second_list: KeyT,
        timeout: int,  # noqa: ASYNC109 - redis-py's signature
        src: str = "LEFT",
        dest: str = "RIGHT",
    ) -> Any:
        raise _blocking("BLMOVE", "LMOVE")

    @writes("args")
    async def blmpop(
        self,
        timeout: float,  # noqa: ASYNC109 - redis-py's signature
        numkeys: int,
        *args: KeyT,
        direction: str,
        count: int | None = 1,
    ) -> Any:
        raise _blocking("BLMPOP", "LMPOP")
