"""Sorted-set commands, with redis-py 8.1's signatures and Redis's answers and errors.

* write one key: ZADD (NX/XX/CH/INCR/GT/LT), ZINCRBY, ZREM, ZREMRANGEBYRANK,
  ZREMRANGEBYSCORE, ZREMRANGEBYLEX, ZPOPMIN, ZPOPMAX;
* write several keys in one read-modify-write (a transaction on a coordinated namespace):
  ZMPOP, ZINTERSTORE, ZUNIONSTORE, ZDIFFSTORE, ZRANGESTORE;
* read: ZRANGE (by rank, BYSCORE or BYLEX; REV; LIMIT), ZREVRANGE, ZRANGEBYSCORE,
  ZREVRANGEBYSCORE, ZRANGEBYLEX, ZREVRANGEBYLEX, ZCOUNT, ZLEXCOUNT, ZSCORE, ZMSCORE, ZCARD,
  ZRANK, ZREVRANK (WITHSCORE, as Redis 7.2), ZRANDMEMBER, ZINTER, ZINTERCARD, ZUNION, ZDIFF,
  ZSCAN and ``zscan_iter``;
* refused: BZPOPMIN, BZPOPMAX, BZMPOP (blocking would mean polling KV).

A sorted set is one KV entry (a JSON array of [member, score] ordered by score, member),
read whole and written whole; ZSCAN therefore answers every member at once (cursor 0).
Answers take redis-py's shapes: scores as floats, or through ``score_cast_func`` where
redis-py has one (it gets the score's text, as bytes); ZDIFF and ZRANDMEMBER WITHSCORES and
ZMPOP leave scores as that text, as redis-py does. ZUNION/ZINTER accept sets as inputs
(every member scores 1) and the COUNT aggregate of Redis 8.8, as redis-py offers it.
Argument parsing and the range walks live in :mod:`brainbot.storage.commands.ranges`.
"""

from __future__ import annotations

import builtins
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brainbot.errors import DataError, ResponseError, UnsupportedOperation, WrongTypeError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import INT64, score_text
from brainbot.storage.commands.ranges import (
    NOT_AN_INTEGER,
    Pair,
    by_lex,
    by_rank,
    by_score,
    check_cursor,
    lex_range,
    member_matcher,
    parse_double,
    parse_long,
    score_range,
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

ScoreCast = Callable[[Any], Any]
Picker = Callable[[Sequence[Pair]], builtins.list[Pair]]

NOT_A_FLOAT = "value is not a valid float"
SYNTAX_ERROR = "syntax error"


def _ordered(data: Mapping[bytes, float]) -> builtins.list[Pair]:
    """Redis's order: by score, then by member bytes."""
    return sorted(data.items(), key=lambda p: (p[1], p[0]))


def _kept(score: float) -> float:
    """A score as a compact sorted set stores it (``-0`` becomes ``0``)."""
    return 0.0 if score == 0 else score


def _cast(score_cast_func: ScoreCast, text: Any) -> Any:
    """A score's text through ``score_cast_func``, falling back to ``float`` first when the
    function refuses the text (redis-py's own wrapper does the same)."""
    if score_cast_func is float:
        return float(text)
    try:
        return score_cast_func(text)
    except (ValueError, TypeError):
        return score_cast_func(float(text))


def _blocking(command: str, instead: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"{command} is not supported on KV: polling would spend KV's 1 write/s per key and "
        f"the API budget; use {instead} instead"
    )


def _replace(
    found: Mapping[str, Item | None], target: str, data: dict[bytes, float]
) -> dict[str, Item | None]:
    """The write that makes ``target`` this sorted set (no TTL), or deletes it when empty
    (nothing to write when it is already absent)."""
    if data:
        return {target: Item("zset", data)}
    return {target: None} if found[target] is not None else {}


# -- ZRANGE and friends ---------------------------------------------------------------------


def _check_zrange(byscore: bool, bylex: bool, withscores: bool, offset: Any, num: Any) -> None:
    """What redis-py's ``_zrange`` refuses before sending."""
    if byscore and bylex:
        raise DataError("``byscore`` and ``bylex`` can not be specified together.")
    if (offset is None) != (num is None):
        raise DataError("``offset`` and ``num`` must both be specified.")
    if bylex and withscores:
        raise DataError("``withscores`` not supported in combination with ``bylex``.")


def _check_limit(start: Any, num: Any) -> None:
    """What redis-py's Z[REV]RANGEBY{SCORE,LEX} refuse before sending."""
    if (start is None) != (num is None):
        raise DataError("``start`` and ``num`` must both be specified")


def _picker(
    encode: Callable[[ValueT], bytes],
    start: ValueT,
    end: ValueT,
    by: str,
    reverse: bool,
    offset: ValueT | None = None,
    num: ValueT | None = None,
) -> Picker:
    """A ZRANGE-family range (``by`` "rank", "score" or "lex"), parsed as Redis parses it
    before it looks the key up: LIMIT first, then the two bounds (given max first in
    reverse, for scores and lex)."""
    first, last = encode(start), encode(end)
    skip, limit = 0, -1
    if offset is not None and num is not None:
        skip, limit = parse_long(encode(offset)), parse_long(encode(num))
    if by == "rank":
        if limit != -1:
            raise ResponseError(
                "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
            )
        low, high = parse_long(first), parse_long(last)
        return lambda ordered: by_rank(ordered, low, high, reverse)
    if reverse:
        first, last = last, first
    if by == "score":
        scores = score_range(first, last)
        return lambda ordered: by_score(ordered, scores, reverse, skip, limit)
    lex = lex_range(first, last)
    return lambda ordered: by_lex(ordered, lex, reverse, skip, limit)


def _range_kind(byscore: bool, bylex: bool) -> str:
    return "score" if byscore else "lex" if bylex else "rank"


# -- ZUNION, ZINTER, ZDIFF (and their STORE forms), ZINTERCARD --------------------------------


def _zaggregate_args(
    encode: Callable[[ValueT], bytes],
    keys: Iterable[KeyT] | Mapping[KeyT, float],
    aggregate: str | None = None,
    withscores: bool = False,
) -> builtins.list[bytes]:
    """The arguments redis-py's ``_zaggregate`` sends after the command (and destination):
    ``numkeys key... [WEIGHTS w...] [AGGREGATE a] [WITHSCORES]``."""
    weights: builtins.list[Any] = []
    if isinstance(keys, dict):  # redis-py takes weights from a dict only
        names, weights = builtins.list(keys.keys()), builtins.list(keys.values())
    else:
        names = builtins.list(keys)
    args: builtins.list[Any] = [len(names), *names]
    if weights:
        args += [b"WEIGHTS", *weights]
    if aggregate:
        if aggregate.upper() not in ["SUM", "MIN", "MAX", "COUNT"]:
            raise DataError("aggregate can be sum, min, max or count.")
        args += [b"AGGREGATE", aggregate]
    if withscores:
        args.append(b"WITHSCORES")
    return [encode(a) for a in args]


def _numkeys(
    command: str, args: builtins.list[bytes]
) -> tuple[builtins.list[bytes], builtins.list[bytes]]:
    """The input keys and the options after them, as Redis reads ``numkeys key [key ...]
    [options]`` (every one of these commands needs at least ``numkeys`` and one more)."""
    if len(args) < 2:
        raise ResponseError(f"wrong number of arguments for '{command}' command")
    setnum = parse_long(args[0])
    if setnum < 1:
        raise ResponseError(f"at least 1 input key is needed for '{command}' command")
    if setnum > len(args) - 1:
        raise ResponseError(SYNTAX_ERROR)
    return args[1 : 1 + setnum], args[1 + setnum :]


@dataclass(slots=True)
class _SetOptions:
    weights: builtins.list[float]
    aggregate: bytes = b"sum"
    withscores: bool = False
    limit: int = 0


def _set_options(
    options: builtins.list[bytes], setnum: int, *, diff: bool, store: bool, card: bool
) -> _SetOptions:
    """WEIGHTS, AGGREGATE, WITHSCORES and LIMIT as Redis parses them (after it looked the
    keys up: a wrong type is reported first)."""
    parsed = _SetOptions([1.0] * setnum)
    j = 0
    while j < len(options):
        remaining = len(options) - j
        word = options[j].lower()
        if not diff and not card and remaining >= setnum + 1 and word == b"weights":
            parsed.weights = [
                parse_double(w, "weight value is not a float")
                for w in options[j + 1 : j + 1 + setnum]
            ]
            j += 1 + setnum
        elif not diff and not card and remaining >= 2 and word == b"aggregate":
            parsed.aggregate = options[j + 1].lower()
            if parsed.aggregate not in (b"sum", b"min", b"max", b"count"):
                raise ResponseError(SYNTAX_ERROR)
            j += 2
        elif not store and not card and word == b"withscores":
            parsed.withscores = True
            j += 1
        elif card and remaining >= 2 and word == b"limit":
            parsed.limit = parse_long(options[j + 1], "LIMIT can't be negative")
            if parsed.limit < 0:
                raise ResponseError("LIMIT can't be negative")
            j += 2
        else:
            raise ResponseError(SYNTAX_ERROR)
    return parsed


def _scores_of(item: Item | None) -> dict[bytes, float]:
    """An input of ZUNION/ZINTER/ZDIFF: a sorted set, or a set (every member scores 1)."""
    if item is None:
        return {}
    if item.type == "zset":
        return item.data  # type: ignore[no-any-return]
    if item.type == "set":
        return dict.fromkeys(item.data, 1.0)
    raise WrongTypeError


def _aggregated(total: float, value: float, aggregate: bytes) -> float:
    if aggregate == b"sum":
        total += value
        return 0.0 if math.isnan(total) else total  # inf + -inf: Redis's convention is 0
    if aggregate == b"min":
        return value if value < total else total
    return value if value > total else total


def _combine(
    op: str, sources: builtins.list[dict[bytes, float]], options: _SetOptions
) -> dict[bytes, float]:
    """ZINTER/ZUNION/ZDIFF of the inputs, weighted and aggregated in Redis's order (from the
    smallest input, so float sums round as Redis's do)."""
    if op == "diff":
        first, others = sources[0], sources[1:]
        return {m: s for m, s in first.items() if not any(m in other for other in others)}
    aggregate = options.aggregate
    if aggregate == b"count":  # Redis 8.8: each input counts its weight, whatever the score
        sources = [dict.fromkeys(source, 1.0) for source in sources]
        aggregate = b"sum"
    inputs = sorted(zip(sources, options.weights, strict=True), key=lambda p: len(p[0]))
    result: dict[bytes, float] = {}
    if op == "inter":
        (smallest, weight), rest = inputs[0], inputs[1:]
        for member, score in smallest.items():
            total = weight * score
            total = 0.0 if math.isnan(total) else total
            for source, other_weight in rest:
                if member not in source:
                    break
                total = _aggregated(total, source[member] * other_weight, aggregate)
            else:
                result[member] = total
        return result
    for source, weight in inputs:
        for member, score in source.items():
            value = weight * score
            value = 0.0 if math.isnan(value) else value
            result[member] = (
                value if member not in result else _aggregated(result[member], value, aggregate)
            )
    return result


def _mpop_args(args: builtins.list[bytes]) -> tuple[builtins.list[bytes], bool, int]:
    """ZMPOP's ``numkeys key... MIN|MAX [COUNT count]`` as Redis reads it: the keys,
    whether to pop the highest, and how many."""
    if len(args) < 3:
        raise ResponseError("wrong number of arguments for 'zmpop' command")
    numkeys = parse_long(args[0], "numkeys should be greater than 0")
    if numkeys < 1:
        raise ResponseError("numkeys should be greater than 0")
    where = numkeys + 1
    if where >= len(args) or args[where].upper() not in (b"MIN", b"MAX"):
        raise ResponseError(SYNTAX_ERROR)
    count: int | None = None
    j = where + 1
    while j < len(args):
        if count is None and args[j].upper() == b"COUNT" and j + 1 < len(args):
            count = parse_long(args[j + 1], "count should be greater than 0")
            if count < 1:
                raise ResponseError("count should be greater than 0")
            j += 2
        else:
            raise ResponseError(SYNTAX_ERROR)
    return args[1:where], args[where].upper() == b"MAX", count or 1


class SortedSetCommands(CommandFamily):
    # -- writes of one key ---------------------------------------------------------------

    @writes("name")
    async def zadd(
        self,
        name: KeyT,
        mapping: Mapping[ValueT, ValueT],
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
        if gt and lt:
            raise DataError("ZADD allows either 'gt' or 'lt', not both")
        if incr and len(mapping) != 1:
            raise DataError(
                "ZADD option 'incr' only works when passing a single element/score pair"
            )
        if nx and (gt or lt):
            raise DataError("Only one of 'nx', 'lt', or 'gr' may be defined.")
        encode = self._engine.encode
        encoded = [(encode(s), encode(m)) for m, s in mapping.items()]  # as redis-py sends
        pairs = [(member, parse_double(score, NOT_A_FLOAT)) for score, member in encoded]

        def change(item: Item | None) -> Change:
            item = item or Item("zset", {})
            added = changed = 0
            result: float | None = None
            for member, score in pairs:
                old = item.data.get(member)
                if (nx and old is not None) or (xx and old is None):
                    continue
                new = old + score if incr and old is not None else score
                if math.isnan(new):
                    raise ResponseError("resulting score is not a number (NaN)")
                if old is not None and ((gt and new <= old) or (lt and new >= old)):
                    continue
                if old is None:
                    added += 1
                elif new != old:
                    changed += 1
                item.data[member] = _kept(new)
                result = new
            if incr:
                return Change(result, item, result is not None)
            return Change((added + changed if ch else added), item, bool(added or changed))

        return await self._engine.update(name, "zset", change)  # type: ignore[no-any-return]

    @writes("name")
    async def zincrby(self, name: KeyT, amount: float, value: ValueT) -> float:
        engine = self._engine
        increment = parse_double(engine.encode(amount), NOT_A_FLOAT)
        member = engine.encode(value)

        def change(item: Item | None) -> Change:
            item = item or Item("zset", {})
            old = item.data.get(member)
            new = increment if old is None else old + increment
            if math.isnan(new):
                raise ResponseError("resulting score is not a number (NaN)")
            item.data[member] = _kept(new)
            return Change(new, item, old is None or _kept(new) != old)

        return float(await engine.update(name, "zset", change))

    @writes("name")
    async def zrem(self, name: KeyT, *values: ValueT) -> int:
        members = [self._engine.encode(v) for v in values]

        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            removed = sum(item.data.pop(m, None) is not None for m in set(members))
            return Change(removed, item, removed > 0)

        return int(await self._engine.update(name, "zset", change))

    async def _zremove(self, name: KeyT, pick: Picker) -> int:
        def change(item: Item | None) -> Change:
            if item is None:
                return Change(0, None, False)
            chosen = pick(_ordered(item.data))
            for member, _ in chosen:
                del item.data[member]
            return Change(len(chosen), item, bool(chosen))

        return int(await self._engine.update(name, "zset", change))

    @writes("name")
    async def zremrangebyrank(self, name: KeyT, min: int, max: int) -> int:
        return await self._zremove(name, _picker(self._engine.encode, min, max, "rank", False))

    @writes("name")
    async def zremrangebyscore(self, name: KeyT, min: ValueT, max: ValueT) -> int:
        return await self._zremove(name, _picker(self._engine.encode, min, max, "score", False))

    @writes("name")
    async def zremrangebylex(self, name: KeyT, min: ValueT, max: ValueT) -> int:
        return await self._zremove(name, _picker(self._engine.encode, min, max, "lex", False))

    async def _zpop(self, name: KeyT, count: int | None, highest: bool) -> builtins.list[Any]:
        engine = self._engine
        positive = "value is out of range, must be positive"
        n = 1 if count is None else parse_long(engine.encode(count), positive)
        if n < 0:
            raise ResponseError(positive)

        def change(item: Item | None) -> Change:
            if item is None or n == 0:
                return Change([], None, False)
            ordered = _ordered(item.data)
            taken = (ordered[::-1] if highest else ordered)[:n]
            for member, _ in taken:
                del item.data[member]
            return Change([(engine.out(m), s) for m, s in taken], item, True)

        return await engine.update(name, "zset", change)  # type: ignore[no-any-return]

    @writes("name")
    async def zpopmin(self, name: KeyT, count: int | None = None) -> builtins.list[Any]:
        return await self._zpop(name, count, highest=False)

    @writes("name")
    async def zpopmax(self, name: KeyT, count: int | None = None) -> builtins.list[Any]:
        return await self._zpop(name, count, highest=True)

    # -- writes of several keys ------------------------------------------------------------

    @writes("keys")
    async def zmpop(
        self,
        num_keys: int,
        keys: builtins.list[KeyT],
        min: bool | None = False,
        max: bool | None = False,
        count: int | None = 1,
    ) -> builtins.list[Any] | None:
        """Pop from the first of ``keys`` that exists; the scores stay text, as redis-py
        leaves ZMPOP's reply."""
        if (min and max) or (not min and not max):
            raise DataError("ZMPOP needs either min or max (not both)")
        engine = self._engine
        args: builtins.list[Any] = [num_keys, *keys, "MIN" if min else "MAX"]
        if count != 1:
            args += ["COUNT", count]
        names, highest, n = _mpop_args([engine.encode(a) for a in args])
        kvkeys = [engine.key(k) for k in names]

        def change(found: dict[str, Item | None]) -> Changes:
            for kvkey in kvkeys:
                item = found[kvkey]
                if item is None:
                    continue
                if item.type != "zset":
                    raise WrongTypeError
                ordered = _ordered(item.data)
                taken = (ordered[::-1] if highest else ordered)[:n]
                for member, _ in taken:
                    del item.data[member]
                popped = [[engine.out(m), score_text(s)] for m, s in taken]
                return Changes([engine.name_out(kvkey), popped], {kvkey: item})
            return Changes(None, {})

        return await engine.update_many(kvkeys, change)  # type: ignore[no-any-return]

    async def _zstore(self, command: str, op: str, dest: KeyT, args: builtins.list[bytes]) -> int:
        engine = self._engine
        names, options = _numkeys(command, args)
        target = engine.key(dest)
        kvkeys = [engine.key(n) for n in names]

        def change(found: dict[str, Item | None]) -> Changes:
            sources = [_scores_of(found[k]) for k in kvkeys]
            parsed = _set_options(options, len(names), diff=op == "diff", store=True, card=False)
            result = {m: _kept(s) for m, s in _combine(op, sources, parsed).items()}
            return Changes(len(result), _replace(found, target, result))

        return int(await engine.update_many([target, *kvkeys], change))

    @writes("dest", "keys")
    async def zinterstore(
        self,
        dest: KeyT,
        keys: Sequence[KeyT] | Mapping[KeyT, float],
        aggregate: str | None = None,
    ) -> int:
        args = _zaggregate_args(self._engine.encode, keys, aggregate)
        return await self._zstore("zinterstore", "inter", dest, args)

    @writes("dest", "keys")
    async def zunionstore(
        self,
        dest: KeyT,
        keys: Sequence[KeyT] | Mapping[KeyT, float],
        aggregate: str | None = None,
    ) -> int:
        args = _zaggregate_args(self._engine.encode, keys, aggregate)
        return await self._zstore("zunionstore", "union", dest, args)

    @writes("dest", "keys")
    async def zdiffstore(self, dest: KeyT, keys: Sequence[KeyT]) -> int:
        args = _zaggregate_args(self._engine.encode, builtins.list(keys))
        return await self._zstore("zdiffstore", "diff", dest, args)

    @writes("dest", "name")
    async def zrangestore(
        self,
        dest: KeyT,
        name: KeyT,
        start: ValueT,
        end: ValueT,
        byscore: bool = False,
        bylex: bool = False,
        desc: bool = False,
        offset: int | None = None,
        num: int | None = None,
    ) -> int:
        _check_zrange(byscore, bylex, False, offset, num)
        engine = self._engine
        pick = _picker(engine.encode, start, end, _range_kind(byscore, bylex), desc, offset, num)
        target, source = engine.key(dest), engine.key(name)

        def change(found: dict[str, Item | None]) -> Changes:
            item = found[source]
            if item is not None and item.type != "zset":
                raise WrongTypeError
            chosen = pick(_ordered(item.data)) if item is not None else []
            return Changes(len(chosen), _replace(found, target, dict(chosen)))

        return int(await engine.update_many([target, source], change))

    # -- reads --------------------------------------------------------------------------------

    async def _zread_range(
        self, name: KeyT, pick: Picker, withscores: bool, score_cast_func: ScoreCast
    ) -> builtins.list[Any]:
        engine = self._engine
        item = await engine.read(engine.key(name), "zset")
        chosen = pick(_ordered(item.data)) if item is not None else []
        if withscores:  # redis-py hands score_cast_func the score's text, as bytes
            return [(engine.out(m), _cast(score_cast_func, score_text(s))) for m, s in chosen]
        return [engine.out(m) for m, _ in chosen]

    @reads("name")
    async def zrange(
        self,
        name: KeyT,
        start: ValueT,
        end: ValueT,
        desc: bool = False,
        withscores: bool = False,
        score_cast_func: ScoreCast = float,
        byscore: bool = False,
        bylex: bool = False,
        offset: int | None = None,
        num: int | None = None,
    ) -> builtins.list[Any]:
        _check_zrange(byscore, bylex, withscores, offset, num)
        kind = _range_kind(byscore, bylex)
        pick = _picker(self._engine.encode, start, end, kind, desc, offset, num)
        return await self._zread_range(name, pick, withscores, score_cast_func)

    @reads("name")
    async def zrevrange(
        self,
        name: KeyT,
        start: int,
        end: int,
        withscores: bool = False,
        score_cast_func: ScoreCast = float,
    ) -> builtins.list[Any]:
        pick = _picker(self._engine.encode, start, end, "rank", True)
        return await self._zread_range(name, pick, withscores, score_cast_func)

    @reads("name")
    async def zrangebyscore(
        self,
        name: KeyT,
        min: ValueT,
        max: ValueT,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: ScoreCast = float,
    ) -> builtins.list[Any]:
        _check_limit(start, num)
        pick = _picker(self._engine.encode, min, max, "score", False, start, num)
        return await self._zread_range(name, pick, withscores, score_cast_func)

    @reads("name")
    async def zrevrangebyscore(
        self,
        name: KeyT,
        max: ValueT,
        min: ValueT,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: ScoreCast = float,
    ) -> builtins.list[Any]:
        _check_limit(start, num)
        pick = _picker(self._engine.encode, max, min, "score", True, start, num)
        return await self._zread_range(name, pick, withscores, score_cast_func)

    @reads("name")
    async def zrangebylex(
        self,
        name: KeyT,
        min: ValueT,
        max: ValueT,
        start: int | None = None,
        num: int | None = None,
    ) -> builtins.list[Out]:
        _check_limit(start, num)
        pick = _picker(self._engine.encode, min, max, "lex", False, start, num)
        return await self._zread_range(name, pick, False, float)

    @reads("name")
    async def zrevrangebylex(
        self,
        name: KeyT,
        max: ValueT,
        min: ValueT,
        start: int | None = None,
        num: int | None = None,
    ) -> builtins.list[Out]:
        _check_limit(start, num)
        pick = _picker(self._engine.encode, max, min, "lex", True, start, num)
        return await self._zread_range(name, pick, False, float)

    @reads("name")
    async def zcount(self, name: KeyT, min: ValueT, max: ValueT) -> int:
        engine = self._engine
        scores = score_range(engine.encode(min), engine.encode(max))
        item = await engine.read(engine.key(name), "zset")
        return 0 if item is None else sum(s in scores for s in item.data.values())

    @reads("name")
    async def zlexcount(self, name: KeyT, min: ValueT, max: ValueT) -> int:
        engine = self._engine
        lex = lex_range(engine.encode(min), engine.encode(max))
        item = await engine.read(engine.key(name), "zset")
        return 0 if item is None else len(by_lex(_ordered(item.data), lex, reverse=False))

    @reads("name")
    async def zscore(self, name: KeyT, value: ValueT) -> float | None:
        engine = self._engine
        item = await engine.read(engine.key(name), "zset")
        return None if item is None else item.data.get(engine.encode(value))

    @reads("key")
    async def zmscore(
        self, key: KeyT, members: builtins.list[ValueT]
    ) -> builtins.list[float | None]:
        if not members:
            raise DataError("ZMSCORE members must be a non-empty list")
        engine = self._engine
        encoded = [engine.encode(m) for m in members]
        item = await engine.read(engine.key(key), "zset")
        data = {} if item is None else item.data
        return [data.get(m) for m in encoded]

    @reads("name")
    async def zcard(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "zset")
        return 0 if item is None else len(item.data)

    async def _zrank(
        self, name: KeyT, value: ValueT, withscore: bool, score_cast_func: ScoreCast, reverse: bool
    ) -> int | builtins.list[Any] | None:
        engine = self._engine
        member = engine.encode(value)
        item = await engine.read(engine.key(name), "zset")
        if item is None or member not in item.data:
            return None
        mine = (item.data[member], member)
        if reverse:
            rank = sum((s, m) > mine for m, s in item.data.items())
        else:
            rank = sum((s, m) < mine for m, s in item.data.items())
        if withscore:
            return [rank, _cast(score_cast_func, score_text(mine[0]))]
        return rank

    @reads("name")
    async def zrank(
        self,
        name: KeyT,
        value: ValueT,
        withscore: bool = False,
        score_cast_func: ScoreCast = float,
    ) -> int | builtins.list[Any] | None:
        return await self._zrank(name, value, withscore, score_cast_func, reverse=False)

    @reads("name")
    async def zrevrank(
        self,
        name: KeyT,
        value: ValueT,
        withscore: bool = False,
        score_cast_func: ScoreCast = float,
    ) -> int | builtins.list[Any] | None:
        return await self._zrank(name, value, withscore, score_cast_func, reverse=True)

    @reads("key", own=True)
    async def zrandmember(
        self, key: KeyT, count: int | None = None, withscores: bool = False
    ) -> Any:
        """Random members: distinct for a positive count (the whole set, highest first, when
        the count covers it: Redis's order), repeats allowed for a negative one; WITHSCORES
        answers a flat list with the scores as text, as redis-py leaves it."""
        engine = self._engine
        args = [engine.encode(a) for a in ([count] if count is not None else [])]
        if withscores:
            args.append(b"WITHSCORES")
        n: int | None = None
        if args:  # without a count, redis-py sends WITHSCORES where the count belongs
            n = parse_long(args[0], NOT_AN_INTEGER)
            if n < -INT64[1]:
                raise ResponseError(
                    f"value is out of range, value must between {-INT64[1]} and {INT64[1]}"
                )
            if withscores and not -(INT64[1] // 2) <= n <= INT64[1] // 2:
                raise ResponseError("value is out of range")
        item = await engine.read(engine.key(key), "zset")
        if n is None:
            return None if item is None else engine.out(random.choice(builtins.list(item.data)))
        if item is None or n == 0:
            return []
        ordered = _ordered(item.data)
        if n < 0:
            chosen = random.choices(ordered, k=-n)
        elif n >= len(ordered):  # Redis walks the whole set from its end
            chosen = ordered[::-1]
        else:  # a random sample, in the set's order
            chosen = [ordered[i] for i in sorted(random.sample(range(len(ordered)), k=n))]
        if withscores:
            return [x for m, s in chosen for x in (engine.out(m), score_text(s))]
        return [engine.out(m) for m, _ in chosen]

    async def _zcombined(
        self, command: str, op: str, args: builtins.list[bytes]
    ) -> tuple[dict[bytes, float], _SetOptions]:
        engine = self._engine
        names, options = _numkeys(command, args)
        kvkeys = [engine.key(n) for n in names]
        found = await engine.read_many(kvkeys)
        sources = [_scores_of(found[k]) for k in kvkeys]
        card = command == "zintercard"
        parsed = _set_options(options, len(names), diff=op == "diff", store=False, card=card)
        return _combine(op, sources, parsed), parsed

    def _zscored(
        self, data: dict[bytes, float], withscores: bool, score_cast_func: ScoreCast
    ) -> builtins.list[Any]:
        engine = self._engine
        ordered = _ordered(data)
        if withscores:
            return [(engine.out(m), _cast(score_cast_func, score_text(s))) for m, s in ordered]
        return [engine.out(m) for m, _ in ordered]

    @reads("keys")
    async def zinter(
        self,
        keys: Sequence[KeyT] | Mapping[KeyT, float],
        aggregate: str | None = None,
        withscores: bool = False,
    ) -> builtins.list[Any]:
        args = _zaggregate_args(self._engine.encode, keys, aggregate, withscores)
        data, options = await self._zcombined("zinter", "inter", args)
        return self._zscored(data, options.withscores, float)

    @reads("keys")
    async def zunion(
        self,
        keys: Sequence[KeyT] | Mapping[KeyT, float],
        aggregate: str | None = None,
        withscores: bool = False,
        score_cast_func: ScoreCast = float,
    ) -> builtins.list[Any]:
        args = _zaggregate_args(self._engine.encode, keys, aggregate, withscores)
        data, options = await self._zcombined("zunion", "union", args)
        return self._zscored(data, options.withscores, score_cast_func)

    @reads("keys")
    async def zdiff(self, keys: Sequence[KeyT], withscores: bool = False) -> builtins.list[Any]:
        """Members of the first set in none of the others; WITHSCORES answers a flat list
        with the scores as text, as redis-py leaves ZDIFF's reply."""
        engine = self._engine
        args = _zaggregate_args(engine.encode, builtins.list(keys), withscores=withscores)
        data, options = await self._zcombined("zdiff", "diff", args)
        ordered = _ordered(data)
        if options.withscores:
            return [x for m, s in ordered for x in (engine.out(m), score_text(s))]
        return [engine.out(m) for m, _ in ordered]

    @reads("keys")
    async def zintercard(self, numkeys: int, keys: builtins.list[KeyT], limit: int = 0) -> int:
        engine = self._engine
        args = [engine.encode(a) for a in [numkeys, *keys, "LIMIT", limit]]
        data, options = await self._zcombined("zintercard", "inter", args)
        return builtins.min(len(data), options.limit) if options.limit else len(data)

    @reads("name", own=True)
    async def zscan(
        self,
        name: KeyT,
        cursor: int = 0,
        match: str | bytes | None = None,
        count: int | None = None,
        score_cast_func: ScoreCast = float,
    ) -> tuple[int, builtins.list[tuple[Any, Any]]]:
        """Every member in one page (cursor 0): the whole set is one KV entry, so paging
        would only cost more reads. ``count`` is checked and otherwise a hint, as in Redis."""
        engine = self._engine
        check_cursor(engine.encode(cursor))
        pattern = None if match is None else engine.encode(match)
        hint = None if count is None else engine.encode(count)
        item = await engine.read(engine.key(name), "zset")
        if item is None:
            return 0, []
        if hint is not None and parse_long(hint) < 1:
            raise ResponseError(SYNTAX_ERROR)
        wanted = None if pattern is None or pattern == b"*" else member_matcher(pattern)
        return 0, [
            (engine.out(m), _cast(score_cast_func, engine.out(score_text(s))))
            for m, s in _ordered(item.data)
            if wanted is None or wanted(m)
        ]

    @reads("name")
    async def zscan_iter(
        self,
        name: KeyT,
        match: str | bytes | None = None,
        count: int | None = None,
        score_cast_func: ScoreCast = float,
    ) -> AsyncIterator[tuple[Any, Any]]:
        """Every (member, score) of the set: one ZSCAN answers them all."""
        _, pairs = await self.zscan(name, 0, match, count, score_cast_func)
        for pair in pairs:
            yield pair

    # -- blocking pops: refused ---------------------------------------------------------------

    @writes("keys")
    async def bzpopmin(
        self,
        keys: KeyT | Iterable[KeyT],
        timeout: float | None = 0,  # noqa: ASYNC109 - redis-py's signature
    ) -> Any:
        raise _blocking("BZPOPMIN", "ZPOPMIN")

    @writes("keys")
    async def bzpopmax(
        self,
        keys: KeyT | Iterable[KeyT],
        timeout: float | None = 0,  # noqa: ASYNC109 - redis-py's signature
    ) -> Any:
        raise _blocking("BZPOPMAX", "ZPOPMAX")

    @writes("keys")
    async def bzmpop(
        self,
        timeout: float,  # noqa: ASYNC109 - redis-py's signature
        numkeys: int,
        keys: builtins.list[KeyT],
        min: bool | None = False,
        max: bool | None = False,
        count: int | None = 1,
    ) -> Any:
        raise _blocking("BZMPOP", "ZMPOP")
