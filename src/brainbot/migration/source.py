"""Reading Redis/Upstash for the migration: SCAN only (never KEYS), every type, TTLs,
sizes checked before values are read.

A batch of keys (one SCAN step) is read by one Lua script (``READ_SCRIPT``, run with
EVALSHA): for each key its type, its remaining TTL, its size (``STRLEN``, the element count,
``MEMORY USAGE``) and, when the key is small, its value, all in one round trip and one
reply that hiredis parses in C. One command per batch instead of three per key is what
makes the read fast (redis-py spends about 20 µs on each pipelined command), and type,
TTL and value come from one moment.

What the script does not read is read after it, one key at a time: a string up to KV's
25 MiB with ``GET``; a container in slices (``LRANGE``, ``HSCAN``, ``SSCAN``, ``ZSCAN`` of
10,000 elements: no single reply is large, so no read times out and memory stays
bounded). A string over 25 MiB, or a container whose size estimate is far beyond it, is
reported without being read. Where scripts are not allowed, the same checks run as
pipelined commands (slower).

redis-py's errors are translated here, where Redis's data enters: a refused or dropped
connection is ``RedisUnavailable``, a wrong password a ``ConfigError``, any other error reply
a ``MigrationError``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
OVERSIZE_ESTIMATE = 4 * MAX_VALUE_BYTES
"""A container whose memory estimate passes this is not read: it cannot fit KV's 25 MiB
(its JSON is at least about a quarter of Redis's memory for it)."""

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

    def __init__(self, redis: Any, *, slice_size: int = SLICE) -> None:
        self.redis = redis
        self.slice_size = slice_size
        self._script: Any = redis.register_script(READ_SCRIPT)
        self._scripts_allowed = True

    async def read(self, keys: Sequence[bytes]) -> list[Record]:
        """Type, TTL, size and (unless oversize) value of each key."""
        if not keys:
            return []
        with translated():
            if self._scripts_allowed:
                try:
                    return await self._read_scripted(keys)
                except Exception as exc:
                    if not _scripts_refused(exc):
                        raise
                    self._scripts_allowed = False
            return await self._read_pipelined(keys)

    async def _read_scripted(self, keys: Sequence[bytes]) -> list[Record]:
        reply = await self._script(args=[SMALL_BYTES, self.slice_size, BATCH_BYTES, *keys])
        records = []
        for i, key in enumerate(keys):
            kind, ttl, size, count, raw = reply[5 * i : 5 * i + 5]
            kind = _text(kind)
            record = Record(key, kind, None, int(ttl), int(size))
            if raw is not None:
                record.value = _value(kind, raw)
            elif kind in SUPPORTED:
                await self._read_alone(record, int(count))
            records.append(record)
        return records

    async def _read_pipelined(self, keys: Sequence[bytes]) -> list[Record]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
            pipe.pttl(key)
        meta = await pipe.execute()
        records = [
            Record(key, _text(kind), None, int(ttl))
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
        for record, count in zip(records, counts, strict=True):
            if record.type in SUPPORTED and isinstance(count, int):
                if record.type == "string":
                    record.size = count
                await self._read_alone(record, 0 if record.type == "string" else count)
            elif record.type in SUPPORTED:
                record.type = "changed"
        return records

    async def _read_alone(self, record: Record, count: int) -> None:
        """A key the batch did not read: a string whole (unless over KV's limit), a
        container in slices (unless its estimate is far past the limit)."""
        key, kind = record.key, record.type
        if kind == "string":
            if record.size > MAX_VALUE_BYTES:
                record.oversize = True
                return
            value = await self.redis.get(key)
        elif record.size > OVERSIZE_ESTIMATE:
            record.oversize = True
            return
        elif kind == "list":
            value = []
            for start in range(0, max(count, 1), self.slice_size):
                part = await self.redis.lrange(key, start, start + self.slice_size - 1)
                value += part
                if len(part) < self.slice_size:
                    break
        else:
            scan = {"hash": self.redis.hscan, "set": self.redis.sscan, "zset": self.redis.zscan}
            cursor, parts = 0, []
            while True:
                cursor, part = await scan[kind](key, cursor=cursor, count=self.slice_size)
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


def _scripts_refused(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("unknown command", "noscript", "not allowed", "scripting", "eval")
    )


async def read(redis: Any, keys: list[bytes]) -> list[Record]:
    """Type, TTL, size and value of each key (see :class:`Reader`)."""
    return await Reader(redis).read(keys)
