"""Reading Redis/Upstash for the migration: SCAN only (never KEYS), every type, TTLs,
sizes checked before values are read.

A batch of keys (one SCAN step) is read by one Lua script (``READ_SCRIPT``, run with
EVALSHA): for each key its type, its remaining TTL, its size (``STRLEN``, the element count,
``MEMORY USAGE``) and, when the key is small, its value, all in one round trip and one
reply that hiredis parses in C. One command per batch instead of three per key is what
makes the read fast (redis-py spends about 20 µs on each pipelined command), and type,
TTL and value come from one moment.

What the script does not read is read after it, one key at a time: a string up to KV's
25 MiB with ``GET``; a container in slices (``LRANGE``, ``ZRANGE``, ``HSCAN``, ``SSCAN`` of
10,000 elements, fewer where ``MEMORY USAGE`` says they are big: no single reply is large,
so no read times out). A big container is never held as Python objects: each slice goes
straight into the two JSON forms the migration needs (KV's value and the backup's), an
``Encoded``, and the read stops as soon as KV's form passes 25 MiB (a set's members, once
they surely pass it). Only containers the caller must see element by element (legacy
conversations and owner sets: ``whole``) are read into Python, up to a bound. A string
over 25 MiB, or a container that surely cannot fit (``surely_oversize``), is reported
without being read. Where scripts are not allowed, the same checks run as pipelined
commands (slower).

redis-py's errors are translated here, where Redis's data enters: a refused or dropped
connection is ``RedisUnavailable``, a wrong password a ``ConfigError``, any other error reply
a ``MigrationError``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from brainbot.errors import (
    BrainbotError,
    ConfigError,
    InvalidInput,
    MigrationError,
    RedisUnavailable,
)
from brainbot.kv.limits import MAX_VALUE_BYTES
from brainbot.migration.url import SourceURL

SUPPORTED = ("string", "list", "hash", "set", "zset")


def redacted(url: str) -> str:
    """The URL without any password, for logs, reports and checkpoints (see ``url.py``);
    a URL that does not parse is not shown at all."""
    try:
        return SourceURL.parse(url).redacted
    except InvalidInput:
        return "(an invalid Redis URL)"


@contextmanager
def translated() -> Iterator[None]:
    """redis-py's errors as brainbot's: connection trouble is ``RedisUnavailable``, an
    error reply ``MigrationError`` (neither carries the URL, so no password)."""
    from redis.exceptions import AuthenticationError as RedisAuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        yield
    except BrainbotError:
        raise
    except RedisAuthenticationError as exc:  # not "retry later": the credentials are wrong
        raise ConfigError(f"Redis refused the credentials: {exc}") from None
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise RedisUnavailable(f"Redis: {type(exc).__name__}: {exc}") from None
    except RedisError as exc:
        raise MigrationError(f"Redis: {type(exc).__name__}: {exc}") from None


SOCKET_TIMEOUT = 60.0
"""Seconds one reply may take: no single reply is big (batches and slices are bounded)."""


def connect(url: str, *, tls_ca_file: str | None = None, password: str | None = None) -> Any:
    """A redis-py client for ``redis://`` or ``rediss://`` (TLS, as Upstash uses); the URL
    is checked first (``SourceURL``), ``password`` wins over one in the URL."""
    parsed = SourceURL.parse(url, password=password)
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigError("The migration needs redis-py: pip install 'brainbot[redis]'.") from None
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": 10.0,
    }
    if parsed.scheme == "rediss" and tls_ca_file:
        options["ssl_ca_certs"] = tls_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    try:
        return aioredis.Redis.from_url(**parsed.client_kwargs(), decode_responses=False, **options)
    except ValueError as exc:  # the URL is not repeated: it may hold a password
        raise InvalidInput(f"The source URL is not usable: {type(exc).__name__}.") from None


T = TypeVar("T")


async def read_ahead(
    produce: Callable[[Callable[[T], Awaitable[None]]], Awaitable[None]], depth: int
) -> AsyncIterator[T]:
    """What ``produce`` hands on (to the function it is given), read in a task of its own
    while the caller works on the previous items: at most ``depth`` wait. A failure of
    ``produce`` ends the iteration with its error (the caller never waits for an item
    that will not come); leaving the iteration early stops ``produce``."""
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(depth)

    async def hand_on(item: T) -> None:
        await queue.put((item,))

    async def run() -> None:
        try:
            await produce(hand_on)
        except asyncio.CancelledError:
            raise  # the caller left: nobody waits for the end (and the queue may be full)
        except BaseException:
            await queue.put(None)  # the caller takes what is queued, then sees the error
            raise
        await queue.put(None)

    task = asyncio.get_running_loop().create_task(run())
    try:
        while (got := await queue.get()) is not None:
            yield got[0]
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def scan_batches(
    redis: Any,
    *,
    cursor: int = 0,
    match: str | None = None,
    type_: str | None = None,
    count: int = 1000,
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """(next cursor, keys) for each SCAN step, starting at ``cursor``; ends at cursor 0."""
    while True:
        with translated():
            cursor, keys = await redis.scan(cursor=cursor, match=match, count=count, _type=type_)
        yield int(cursor), list(keys)
        if int(cursor) == 0:
            return


SMALL_BYTES = 1024 * 1024
"""A value up to this is read by the batch script; a bigger one on its own."""
BATCH_BYTES = 16 * 1024 * 1024
"""The script stops reading values once a batch's reply holds this much."""
SLICE = 10_000
"""Elements per slice of a big container (and the most the script reads in one)."""
SLICE_BYTES = 8 * 1024 * 1024
"""About the most one slice of a big container asks for, by its sampled element size."""
MIN_ELEMENT_JSON = {"list": 3, "set": 3, "hash": 6, "zset": 7}
"""The fewest bytes of KV's JSON an element takes: ``"",``, ``"":"",``, ``["",0],``."""
PIECE_BYTES = 32 * 1024 * 1024
"""About the most value bytes handed on at once (a SCAN step of big values is split)."""
WHOLE_ESTIMATE = 2 * MAX_VALUE_BYTES
"""The most a container ``whole`` asks for is read into Python (some 150 MB of objects);
a bigger one is streamed like any other container."""

READ_SCRIPT = """
local small, many, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used, out = 0, {}
local counters = {list = 'LLEN', hash = 'HLEN', set = 'SCARD', zset = 'ZCARD'}
for i = 4, #ARGV do
  local k = ARGV[i]
  local t = redis.call('TYPE', k)['ok']
  local ttl = redis.call('PTTL', k)
  local size, count, value = 0, 0, false
  if t == 'string' then
    size = redis.call('STRLEN', k)
    if size <= small and used + size <= budget then
      value = redis.call('GET', k)
      used = used + size
    end
  elseif counters[t] then
    count = redis.call(counters[t], k)
    local m = redis.pcall('MEMORY', 'USAGE', k)
    if type(m) == 'number' then size = m end
    if count <= many and size <= small and used + size <= budget then
      if t == 'list' then value = redis.call('LRANGE', k, 0, -1)
      elseif t == 'hash' then value = redis.call('HGETALL', k)
      elseif t == 'set' then value = redis.call('SMEMBERS', k)
      else value = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') end
      used = used + size
    end
  end
  out[#out + 1] = t
  out[#out + 1] = ttl
  out[#out + 1] = size
  out[#out + 1] = count
  out[#out + 1] = value
end
return out
"""


@dataclass(slots=True)
class Record:
    """One Redis key as read: its type, value, remaining TTL (ms; -1 none) and size.

    ``value`` is None for a key that was not read: its type is not supported, it
    vanished (type ``none``), or it is ``oversize`` (bigger than KV takes: ``size`` says
    how big, exactly for a string, estimated for a container)."""

    key: bytes
    type: str
    value: Any
    pttl: int
    size: int = 0
    oversize: bool = False
    read_ms: int | None = None
    """When ``pttl`` was asked for (epoch ms): its expiry is ``read_ms + pttl``, however
    long the big values read after it take (None: the caller's moment of planning)."""


@dataclass(slots=True)
class Encoded:
    """A big container, read slice by slice into the JSON KV stores for it (the layout of
    ``storage.codec``: elements as text, or all base64 when one is not UTF-8) and into the
    backup's JSON (base64 elements), never into Python objects."""

    kv: bytes
    binary: bool
    backup: bytes
    count: int
    size: int
    """Bytes of data (elements, fields and values) as Redis holds them."""


def surely_oversize(kind: str, size: int, count: int) -> bool:
    """Whether a container of ``count`` elements, ``size`` bytes by ``MEMORY USAGE`` (which
    samples a few elements), cannot fit KV's 25 MiB, known without reading it: too many
    elements for even the shortest JSON, or sampled elements that are each over 25 MiB on
    average (so one of them alone is). Its memory alone proves nothing: Redis spends some
    50 bytes on an element whose JSON takes 5 (a set of 2.2 million short members: 138 MB
    in Redis, 24 MB as KV holds it)."""
    if count <= 0:
        return False
    return count * MIN_ELEMENT_JSON.get(kind, 3) > MAX_VALUE_BYTES or size > count * MAX_VALUE_BYTES


def slice_for(size: int, count: int, most: int) -> int:
    """Elements per slice of a container: ``most``, fewer where its sampled element size
    would make a slice pass ``SLICE_BYTES`` (a few big elements: one or two a slice)."""
    if count <= 0 or size <= 0:
        return most
    return max(1, min(most, SLICE_BYTES * count // size))


def weight_of(record: Record) -> int:
    """About the memory a record's value takes (its JSON forms, or its data)."""
    value = record.value
    if value is None:
        return 0
    if isinstance(value, Encoded):
        return len(value.kv) + len(value.backup)
    if isinstance(value, bytes):
        return len(value)
    # Python objects of a container read whole (a few times its data)
    return 3 * record.size or 64 * len(value)


class _NotText(Exception):
    """An element is not UTF-8: encode the container again, base64."""


class _TooBig(Exception):
    """KV's form passed 25 MiB: stop reading."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _NotText from None


def _score(score: float, *, backup: bool) -> float | str:
    if math.isfinite(score):
        return score
    return repr(score) if backup else ("inf" if score > 0 else "-inf")


class _Stream:
    """The two JSON forms of one container, built piece by piece."""

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.text: Callable[[bytes], str] = _b64 if binary else _utf8
        self.kv: list[bytes] = []
        self.backup: list[bytes] = []
        self.kv_bytes = 1  # its brackets, less the comma its first piece is not given
        self.count = 0
        self.size = 0

    def add(self, kv: Any, backup: Any, count: int, size: int) -> None:
        """One slice, as a JSON array or object whose brackets are dropped."""
        piece = orjson.dumps(kv)[1:-1]
        if not piece:
            return
        self.kv_bytes += len(piece) + 1
        if self.kv_bytes > MAX_VALUE_BYTES:
            raise _TooBig
        self.kv.append(piece)
        self.backup.append(orjson.dumps(backup)[1:-1])
        self.count += count
        self.size += size

    def result(self, brackets: bytes) -> Encoded:
        open_, close = brackets[:1], brackets[1:]
        return Encoded(
            open_ + b",".join(self.kv) + close,
            self.binary,
            open_ + b",".join(self.backup) + close,
            self.count,
            self.size,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _value(kind: str, raw: Any) -> Any:
    """A script's or a command's reply as the migration holds a value."""
    if kind == "hash":
        return dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
    if kind == "set":
        return set(raw)
    if kind == "zset":
        return [(m, float(s)) for m, s in zip(raw[::2], raw[1::2], strict=True)]
    return raw


class Reader:
    """Reads batches of keys: the batch script where the server runs scripts, pipelined
    commands where it does not (the first refusal switches for the rest of the run)."""

    def __init__(
        self,
        redis: Any,
        *,
        slice_size: int = SLICE,
        whole: Callable[[bytes, str], bool] | None = None,
    ) -> None:
        self.redis = redis
        self.slice_size = slice_size
        self.whole = whole or (lambda key, kind: False)
        """Which containers the caller must see as Python values (legacy layouts)."""
        self._script: Any = redis.register_script(READ_SCRIPT)
        self._scripts_allowed = True

    async def read(self, keys: Sequence[bytes]) -> list[Record]:
        """Type, TTL, size and (unless oversize) value of each key."""
        return [r async for piece in self.pieces(keys, budget=None) for r in piece]

    async def pieces(
        self, keys: Sequence[bytes], *, budget: int | None = PIECE_BYTES
    ) -> AsyncIterator[list[Record]]:
        """The records of ``keys``, in order, in pieces of about ``budget`` bytes of values
        (so a SCAN step of big values is never in memory at once)."""
        if not keys:
            return
        with translated():
            records, alone = await self._first_pass(keys)
            start, weight = 0, sum(weight_of(r) for r in records)
            for index, count in alone:
                if budget is not None and weight > budget and index > start:
                    yield records[start:index]
                    start, weight = index, 0
                await self._read_alone(records[index], count)
                weight += weight_of(records[index])
            yield records[start:]

    async def _first_pass(
        self, keys: Sequence[bytes]
    ) -> tuple[list[Record], list[tuple[int, int]]]:
        """The records, and (index, element count) of those left to read one by one."""
        if self._scripts_allowed:
            try:
                return await self._read_scripted(keys)
            except Exception as exc:
                if not _scripts_refused(exc):
                    raise
                self._scripts_allowed = False
        return await self._read_pipelined(keys)

    async def _read_scripted(
        self, keys: Sequence[bytes]
    ) -> tuple[list[Record], list[tuple[int, int]]]:
        read_ms = int(time.time() * 1000)
        reply = await self._script(args=[SMALL_BYTES, self.slice_size, BATCH_BYTES, *keys])
        records, alone = [], []
        for i, key in enumerate(keys):
            kind, ttl, size, count, raw = reply[5 * i : 5 * i + 5]
            kind = _text(kind)
            record = Record(key, kind, None, int(ttl), int(size), read_ms=read_ms)
            if raw is not None:
                record.value = _value(kind, raw)
            elif kind in SUPPORTED:
                alone.append((i, int(count)))
            records.append(record)
        return records, alone

    async def _read_pipelined(
        self, keys: Sequence[bytes]
    ) -> tuple[list[Record], list[tuple[int, int]]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
            pipe.pttl(key)
        read_ms = int(time.time() * 1000)
        meta = await pipe.execute()
        records = [
            Record(key, _text(kind), None, int(ttl), read_ms=read_ms)
            for key, kind, ttl in zip(keys, meta[::2], meta[1::2], strict=True)
        ]
        pipe = self.redis.pipeline(transaction=False)
        counters = {
            "string": "strlen",
            "list": "llen",
            "hash": "hlen",
            "set": "scard",
            "zset": "zcard",
        }
        for record in records:
            getattr(pipe, counters.get(record.type, "exists"))(record.key)
        counts = await pipe.execute(raise_on_error=False)
        alone = []
        for i, (record, count) in enumerate(zip(records, counts, strict=True)):
            if record.type in SUPPORTED and isinstance(count, int):
                if record.type == "string":
                    record.size = count
                alone.append((i, 0 if record.type == "string" else count))
            elif record.type in SUPPORTED:
                record.type = "changed"
        return records, alone

    async def _read_alone(self, record: Record, count: int) -> None:
        """A key the batch did not read: a string whole (unless over KV's limit), a
        container in slices (unless it surely cannot fit). A key whose type changed since
        the batch looked at it (the bot is live) is ``changed``, not the end of the run."""
        from redis.exceptions import ResponseError

        try:
            await self._read_value(record, count)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            record.type, record.value, record.oversize = "changed", None, False

    async def _read_value(self, record: Record, count: int) -> None:
        key, kind = record.key, record.type
        if kind == "string":
            if record.size > MAX_VALUE_BYTES:
                record.oversize = True
                return
            value = await self.redis.get(key)
        elif surely_oversize(kind, record.size, count):
            record.oversize = True
            return
        elif not self.whole(key, kind) or record.size > WHOLE_ESTIMATE:
            n = slice_for(record.size, count, self.slice_size)
            encoded = await self._stream(key, kind, n)
            if encoded is None:
                record.oversize = True
            elif not encoded.count:
                record.type, record.value = "none", None  # expired or deleted meanwhile
            else:
                record.value = encoded
            return
        elif kind == "list":
            value, n = [], slice_for(record.size, count, self.slice_size)
            for start in range(0, max(count, 1), n):
                part = await self.redis.lrange(key, start, start + n - 1)
                value += part
                if len(part) < n:
                    break
        else:
            scan = {"hash": self.redis.hscan, "set": self.redis.sscan, "zset": self.redis.zscan}
            cursor, parts, n = 0, [], slice_for(record.size, count, self.slice_size)
            while True:
                cursor, part = await scan[kind](key, cursor=cursor, count=n)
                parts.append(part)
                if int(cursor) == 0:
                    break
            if kind == "hash":
                value = {k: v for part in parts for k, v in part.items()}
            elif kind == "set":
                value = {m for part in parts for m in part}
            else:  # ZSCAN may repeat members: keep one score each, in score order
                scores = {m: float(s) for part in parts for m, s in part}
                value = sorted(scores.items(), key=lambda p: (p[1], p[0]))
        if value is None or value in ([], {}, set()):
            record.type, record.value = "none", None  # expired or deleted meanwhile
        else:
            record.value = value

    async def _stream(self, key: bytes, kind: str, n: int) -> Encoded | None:
        """A container read in slices into its JSON forms (None: over 25 MiB as KV holds
        it). Elements are text until one is not UTF-8; then it is read again, base64."""
        for binary in (False, True):
            stream = _Stream(binary)
            try:
                await self._fill(stream, key, kind, n)
            except _NotText:
                continue
            except _TooBig:
                return None
            brackets = b"{}" if kind == "hash" else b"[]"
            return stream.result(brackets)
        raise AssertionError("base64 is always text")  # pragma: no cover

    async def _fill(self, stream: _Stream, key: bytes, kind: str, n: int) -> None:
        text, redis = stream.text, self.redis
        if kind == "list":
            start = 0
            while part := await redis.lrange(key, start, start + n - 1):
                size = sum(map(len, part))
                stream.add([text(e) for e in part], [_b64(e) for e in part], len(part), size)
                start += len(part)
        elif kind == "zset":  # by rank: Redis's order is the codec's, (score, member)
            start = 0
            while part := await redis.zrange(key, start, start + n - 1, withscores=True):
                stream.add(
                    [[text(m), _score(s, backup=False)] for m, s in part],
                    [[_b64(m), _score(s, backup=True)] for m, s in part],
                    len(part),
                    sum(len(m) + 8 for m, _ in part),
                )
                start += len(part)
        elif kind == "hash":  # HSCAN may repeat a field while Redis rehashes: once each
            seen: set[bytes] = set()
            cursor = 0
            while True:
                cursor, part = await redis.hscan(key, cursor=cursor, count=n)
                fresh = [(f, v) for f, v in part.items() if f not in seen]
                seen.update(f for f, _ in fresh)
                stream.add(
                    {text(f): text(v) for f, v in fresh},
                    {_b64(f): _b64(v) for f, v in fresh},
                    len(fresh),
                    sum(len(f) + len(v) for f, v in fresh),
                )
                if int(cursor) == 0:
                    break
        else:  # a set is stored sorted: its members are gathered first, up to what fits
            with contextlib.closing(_SortedMembers()) as members:
                cursor = 0
                while True:
                    cursor, part = await redis.sscan(key, cursor=cursor, count=n)
                    await asyncio.to_thread(members.add, part)
                    if int(cursor) == 0:
                        break
                for chunk in members.in_order(n):
                    stream.add(
                        [text(m) for m in chunk],
                        [_b64(m) for m in chunk],
                        len(chunk),
                        sum(map(len, chunk)),
                    )


class _SortedMembers:
    """A big set's members in byte order, each once (SSCAN may give one twice), gathered
    in a private temporary SQLite database on disk (deleted when closed), which sorts them
    as it reads them out: as Python bytes, 3.6 million short members took some 250 MB
    more. ``_TooBig`` as soon as they surely pass 25 MiB of JSON."""

    RECOUNT_AFTER = 1024 * 1024
    """Bytes gathered between two counts of the distinct members (each sorts them all)."""

    def __init__(self) -> None:
        # "": temporary, on disk; autocommit, or one open transaction keeps every page in
        # memory (as the rollback's backed-up values measured: 32 MB, 3 MB committed)
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE m (v BLOB)")  # appended; sorted once, when read
        self._least = 1  # the fewest bytes of JSON they take ("m", each), repeats counted
        self._counted = -self.RECOUNT_AFTER

    def add(self, part: list[bytes]) -> None:
        with self._db:  # one transaction a slice (autocommit would make one a member)
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO m VALUES (?)", [(m,) for m in part])
        self._least += sum(map(len, part)) + 3 * len(part)
        if self._least > MAX_VALUE_BYTES and self._least - self._counted > self.RECOUNT_AFTER:
            count, size = self._db.execute(  # some may have come twice: each counts once
                "SELECT count(*), total(length(v)) FROM (SELECT DISTINCT v FROM m)"
            ).fetchone()
            self._least = self._counted = 1 + int(size) + 3 * count  # [] less one comma
            if self._least > MAX_VALUE_BYTES:
                raise _TooBig

    def in_order(self, n: int) -> Iterator[list[bytes]]:
        rows = self._db.execute("SELECT DISTINCT v FROM m ORDER BY v")
        while chunk := rows.fetchmany(n):
            yield [v for (v,) in chunk]

    def close(self) -> None:
        self._db.close()


def _scripts_refused(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("unknown command", "noscript", "not allowed", "scripting", "eval")
    )


async def read(redis: Any, keys: list[bytes]) -> list[Record]:
    """Type, TTL, size and value of each key (see :class:`Reader`)."""
    return await Reader(redis).read(keys)
