"""Set commands: SADD, SREM, SMEMBERS, SISMEMBER, SMISMEMBER, SCARD, SPOP, SRANDMEMBER,
SMOVE, SDIFF/SINTER/SUNION and their STORE forms, SINTERCARD, SSCAN (and ``sscan_iter``).

A set is one KV entry (a sorted JSON array), read whole and written whole. Commands over
several keys read them in one ``read_many`` (WRONGTYPE if any holds another type, as Redis
checks every key first); the ones that write several (the STORE forms, SMOVE) are one
``update_many``, atomic on a coordinated namespace. Arguments are checked in Redis's order
(a bad count is refused before the key is even looked up), with Redis's error texts."""

from __future__ import annotations

import bisect
import builtins
import hashlib
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal

from brainbot.errors import ResponseError, WrongTypeError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import INT64, INTEGER, redis_glob
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

Members = builtins.set[bytes]
SetOp = Literal["diff", "inter", "union"]

NOT_AN_INTEGER = "value is not an integer or out of range"
CURSOR = re.compile(rb"[+-]?[0-9]+|")
SCAN_COUNT = 10  # Redis's default COUNT


def _listed(first: Any, rest: Iterable[Any]) -> builtins.list[Any]:
    """redis-py's ``list_or_args``: one name, or an iterable of them, then the rest."""
    if isinstance(first, str | bytes | bytearray | memoryview):
        names = [first]
    else:
        try:
            names = builtins.list(first)
        except TypeError:
            names = [first]
    return [*names, *rest]


def _long(raw: bytes, error: str) -> int:
    """An integer argument as Redis parses it (strict decimal, 64 bits), or ``error``."""
    if INTEGER.fullmatch(raw) is None or not INT64[0] <= int(raw) <= INT64[1]:
        raise ResponseError(error)
    return int(raw)


def _cursor(raw: bytes) -> int:
    """A SCAN cursor as Redis reads it (C's ``strtoul``: sign allowed, "" is 0, wraps
    modulo 2**64)."""
    if CURSOR.fullmatch(raw) is None or abs(value := int(raw or b"0")) >= 2**64:
        raise ResponseError("invalid cursor")
    return value % 2**64


def _position(member: bytes) -> int:
    """A member's place in SSCAN's order: a stable 64-bit hash, never 0 (0 starts and ends
    a scan)."""
    return int.from_bytes(hashlib.blake2b(member, digest_size=8).digest(), "big") or 1


def _members(found: dict[str, Item | None], kvkeys: builtins.list[str]) -> builtins.list[Members]:
    """The sets under ``kvkeys`` in order (empty if absent); WRONGTYPE if any is not a set."""
    sets = []
    for kvkey in kvkeys:
        item = found[kvkey]
        if item is not None and item.type != "set":
            raise WrongTypeError
        sets.append(set() if item is None else item.data)
    return sets


def _combine(op: SetOp, sets: builtins.list[Members]) -> Members:
    first, rest = sets[0], sets[1:]
    if op == "union":
        return set(first).union(*rest)
    if op == "inter":
        return set(first).intersection(*rest)
    return set(first).difference(*rest)


class SetCommands(CommandFamily):
    # -- one key ------------------------------------------------------------------------

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
    async def smismember(
        self, name: KeyT, values: ValueT | Iterable[ValueT], *args: ValueT
    ) -> builtins.list[int]:
        """0/1 per value, in order (redis-py has no callback for it: ints, not bools)."""
        engine = self._engine
        wanted = [engine.encode(v) for v in _listed(values, args)]
        if not wanted:
            raise ResponseError("wrong number of arguments for 'smismember' command")
        item = await engine.read(engine.key(name), "set")
        members = set() if item is None else item.data
        return [int(v in members) for v in wanted]

    @reads("name")
    async def scard(self, name: KeyT) -> int:
        item = await self._engine.read(self._engine.key(name), "set")
        return 0 if item is None else len(item.data)

    @writes("name", own=True)
    async def spop(self, name: KeyT, count: int | None = None) -> Out | builtins.list[Out] | None:
        """One random member (None if the set is absent), or a list of up to ``count``
        distinct ones (redis-py leaves Redis's array a list); the set goes once emptied."""
        engine = self._engine
        n = None
        if count is not None:  # refused before the key is looked up, as Redis does
            n = _long(engine.encode(count), "value is out of range, must be positive")
            if n < 0:
                raise ResponseError("value is out of range, must be positive")

        def change(item: Item | None) -> Change:
            if item is None or n == 0:
                return Change(None if n is None else [], None, False)
            taken = random.sample(tuple(item.data), 1 if n is None else min(n, len(item.data)))
            item.data.difference_update(taken)
            return Change(taken, item, True)

        taken = await engine.update(name, "set", change)
        if n is None:
            return None if taken is None else engine.out(taken[0])
        return [engine.out(m) for m in taken]

    @reads("name", own=True)
    async def srandmember(
        self, name: KeyT, number: int | None = None
    ) -> Out | builtins.list[Out] | None:
        """One random member (None if absent); with ``number`` >= 0 a list of up to that
        many distinct members, with ``number`` < 0 exactly -number of them, repeats allowed."""
        engine = self._engine
        n = None
        if number is not None:  # refused before the key is looked up, as Redis does
            n = _long(engine.encode(number), NOT_AN_INTEGER)
            if n == INT64[0]:
                raise ResponseError(
                    f"value is out of range, value must between {-INT64[1]} and {INT64[1]}"
                )
        item = await engine.read(engine.key(name), "set")
        if item is None:
            return None if n is None else []
        members = tuple(item.data)
        if n is None:
            return engine.out(random.choice(members))
        if n >= 0:
            chosen = random.sample(members, min(n, len(members)))
        else:
            chosen = random.choices(members, k=-n)
        return [engine.out(m) for m in chosen]

    # -- several keys -------------------------------------------------------------------

    async def _read_sets(self, command: str, names: builtins.list[Any]) -> builtins.list[Members]:
        if not names:
            raise ResponseError(f"wrong number of arguments for '{command}' command")
        engine = self._engine
        kvkeys = [engine.key(n) for n in names]
        return _members(await engine.read_many(kvkeys), kvkeys)

    async def _combined(self, op: SetOp, keys: Any, args: tuple[Any, ...]) -> builtins.set[Out]:
        sets = await self._read_sets(f"s{op}", _listed(keys, args))
        return {self._engine.out(m) for m in _combine(op, sets)}

    @reads("keys", "args")
    async def sdiff(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> builtins.set[Out]:
        """The members of the first set in none of the others."""
        return await self._combined("diff", keys, args)

    @reads("keys", "args")
    async def sinter(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> builtins.set[Out]:
        return await self._combined("inter", keys, args)

    @reads("keys", "args")
    async def sunion(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> builtins.set[Out]:
        return await self._combined("union", keys, args)

    async def _store(self, op: SetOp, dest: KeyT, keys: Any, args: tuple[Any, ...]) -> int:
        """``dest`` := the combined sets, as a new set (no TTL). An empty result deletes
        ``dest``; it is written even when read as absent (another process may have written
        it since, as for DEL). ``dest`` may hold any type: it is replaced, not read."""
        engine = self._engine
        names = _listed(keys, args)
        if not names:
            raise ResponseError(f"wrong number of arguments for 's{op}store' command")
        target = engine.key(dest)
        sources = [engine.key(n) for n in names]

        def change(found: dict[str, Item | None]) -> Changes:
            result = _combine(op, _members(found, sources))
            return Changes(len(result), {target: Item("set", result) if result else None})

        return int(await engine.update_many([target, *sources], change))

    @writes("dest", "keys", "args")
    async def sdiffstore(self, dest: KeyT, keys: KeyT | Iterable[KeyT], *args: KeyT) -> int:
        return await self._store("diff", dest, keys, args)

    @writes("dest", "keys", "args")
    async def sinterstore(self, dest: KeyT, keys: KeyT | Iterable[KeyT], *args: KeyT) -> int:
        return await self._store("inter", dest, keys, args)

    @writes("dest", "keys", "args")
    async def sunionstore(self, dest: KeyT, keys: KeyT | Iterable[KeyT], *args: KeyT) -> int:
        return await self._store("union", dest, keys, args)

    @reads("keys")
    async def sintercard(self, numkeys: int, keys: Iterable[KeyT], limit: int = 0) -> int:
        """The intersection's size, capped at ``limit`` (0: no cap). redis-py sends
        ``numkeys *keys LIMIT limit``; Redis reads ``numkeys`` names from there (so a
        ``numkeys`` that does not match ``keys`` fails, or reads LIMIT as a key, as there)."""
        engine = self._engine
        argv: builtins.list[Any] = [*keys, b"LIMIT", engine.encode(limit)]
        n = _long(engine.encode(numkeys), "numkeys should be greater than 0")
        if n < 1:
            raise ResponseError("numkeys should be greater than 0")
        if n > len(argv):
            raise ResponseError("Number of keys can't be greater than number of args")
        names, options = argv[:n], argv[n:]
        cap, i = 0, 0
        while i < len(options):
            if engine.encode(options[i]).upper() != b"LIMIT" or i + 1 == len(options):
                raise ResponseError("syntax error")
            cap = _long(engine.encode(options[i + 1]), "LIMIT can't be negative")
            if cap < 0:
                raise ResponseError("LIMIT can't be negative")
            i += 2
        size = len(_combine("inter", await self._read_sets("sintercard", names)))
        return min(size, cap) if cap else size

    @writes("src", "dst")
    async def smove(self, src: KeyT, dst: KeyT, value: ValueT) -> bool:
        """Move ``value`` from ``src`` to ``dst`` (both keep their TTLs), atomically."""
        engine = self._engine
        source, target = engine.key(src), engine.key(dst)
        member = engine.encode(value)

        def change(found: dict[str, Item | None]) -> Changes:
            moving, landing = found[source], found[target]
            if moving is None:
                return Changes(False, {})  # Redis looks no further, not even at dst's type
            _members(found, [source, target])
            if source == target or member not in moving.data:
                return Changes(member in moving.data, {})
            moving.data.discard(member)
            landing = landing or Item("set", set())
            landing.data.add(member)
            return Changes(True, {source: moving, target: landing})

        return bool(await engine.update_many([source, target], change))

    # -- scanning -----------------------------------------------------------------------

    def _scan_options(
        self, match: str | bytes | None, count: int | None
    ) -> tuple[Callable[[bytes], bool], int]:
        """SSCAN's MATCH as a test of members (a byte-wise glob, as Redis's) and its COUNT,
        checked as Redis does."""
        engine = self._engine
        size = SCAN_COUNT if count is None else _long(engine.encode(count), NOT_AN_INTEGER)
        if size < 1:
            raise ResponseError("syntax error")
        if match is None:
            return (lambda member: True), size
        regex = redis_glob(engine.encode(match).decode("latin-1"))  # one char per byte
        return (lambda member: regex.match(member.decode("latin-1")) is not None), size

    @reads("name", own=True)
    async def sscan(
        self,
        name: KeyT,
        cursor: int = 0,
        match: str | bytes | None = None,
        count: int | None = None,
    ) -> tuple[int, builtins.list[Out]]:
        """A page of members: ``(next cursor, members)``, cursor 0 when done.

        Members are visited in the order of a stable 64-bit hash of each, and a cursor is the
        hash where the next page starts (rather than an index into a sorted view, which
        would skip members when earlier ones are removed between pages). So, as in Redis, a
        full scan returns every member present from its start to its end, one that comes or
        goes meanwhile may or may not be seen, and the cursors differ from Redis's own. A
        page holds ``count`` (default 10) members examined, then filtered by ``match``."""
        engine = self._engine
        start = _cursor(engine.encode(cursor))
        item = await engine.read(engine.key(name), "set")
        if item is None:
            return 0, []  # no option checked, as Redis answers before reading them
        test, size = self._scan_options(match, count)
        ordered = sorted((_position(m), m) for m in item.data)
        first = bisect.bisect_left(ordered, (start, b""))
        end = min(first + size, len(ordered))
        while 0 < end < len(ordered) and ordered[end][0] == ordered[end - 1][0]:
            end += 1  # members sharing a hash stay on one page: the cursor can't split them
        page = [engine.out(m) for _, m in ordered[first:end] if test(m)]
        return (ordered[end][0] if end < len(ordered) else 0), page

    @reads("name")
    async def sscan_iter(
        self, name: KeyT, match: str | bytes | None = None, count: int | None = None
    ) -> AsyncIterator[Out]:
        """Every member matching ``match``, in SSCAN's order, from one read of the set
        (redis-py pages through SSCAN; the whole set is one KV entry here)."""
        engine = self._engine
        item = await engine.read(engine.key(name), "set")
        if item is None:
            return
        test, _ = self._scan_options(match, count)
        for _, member in sorted((_position(m), m) for m in item.data):
            if test(member):
                yield engine.out(member)
