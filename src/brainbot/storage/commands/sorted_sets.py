"""Sorted-set commands: ZADD (NX/XX/CH/INCR/GT/LT), ZRANGE by index, ZREM, ZSCORE, ZCARD.

A sorted set is one KV entry (a JSON array of [member, score] ordered by score, member)."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Mapping
from typing import Any

from brainbot.errors import DataError, ResponseError, UnsupportedOperation
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import index_range, score_text
from brainbot.storage.engine import Change, CommandFamily, KeyT, ValueT, reads, writes


class SortedSetCommands(CommandFamily):
    @writes("name")
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
            pairs = [(self._engine.encode(m), float(s)) for m, s in mapping.items()]
        except (TypeError, ValueError):
            raise ResponseError("value is not a valid float") from None
        if any(math.isnan(s) for _, s in pairs):
            raise ResponseError("value is not a valid float")

        def change(item: Item | None) -> Change:
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
                return Change(result, item, result is not None)
            return Change((added + changed if ch else added), item, bool(added or changed))

        return await self._engine.update(name, "zset", change)  # type: ignore[no-any-return]

    @reads("name")
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
        engine = self._engine
        item = await engine.read(engine.key(name), "zset")
        if item is None:
            return []
        ordered = sorted(item.data.items(), key=lambda p: (p[1], p[0]), reverse=desc)
        chosen = [ordered[i] for i in index_range(len(ordered), start, end)]
        if withscores:  # redis-py hands score_cast_func the reply's text, as Redis sends it
            return [(engine.out(m), score_cast_func(score_text(s))) for m, s in chosen]
        return [engine.out(m) for m, _ in chosen]

    @writes("name")
    async def zrem(self, name: KeyT, *values: ValueT) -> int:
        members = [self._engine.encode(v) for v in values]

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            removed = sum(item.data.pop(m, None) is not None for m in set(members))
            return Change(removed, item, removed > 0)

        return int(await self._engine.update(name, "zset", change))

    @reads("name")
    async def zscore(self, name: KeyT, value: ValueT) -> float | None:
        engine = self._engine
        item = await engine.read(engine.key(name), "zset")
        return None if item is None else item.data.get(engine.encode(value))

    @reads("name")
    async def zcard(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "zset")
        return 0 if item is None else len(item.data)
