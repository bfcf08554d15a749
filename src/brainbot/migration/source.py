"""Reading Redis/Upstash for the migration: SCAN only (never KEYS), every type, TTLs.

A batch of keys is read with two pipelined round trips: TYPE and PTTL of each key, then
the value by its type. A key that expires or changes type between the two is reported,
never guessed at. redis-py's errors are translated here, where Redis's data enters: a
refused or dropped connection is ``RedisUnavailable``, any other error reply a
``MigrationError``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from brainbot.errors import (
    BrainbotError,
    ConfigError,
    InvalidInput,
    MigrationError,
    RedisUnavailable,
)

SUPPORTED = ("string", "list", "hash", "set", "zset")


@dataclass(slots=True)
class Record:
    """One Redis key as read: its type, value and remaining TTL (ms; -1 none)."""

    key: bytes
    type: str
    value: Any
    pttl: int


def redacted(url: str) -> str:
    """The URL without its password, for logs, reports and checkpoints."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, parts.query, ""))


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


def connect(url: str, *, tls_ca_file: str | None = None) -> Any:
    """A redis-py client for ``redis://`` or ``rediss://`` (TLS, as Upstash uses)."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise InvalidInput(
            f"The source must be a redis:// or rediss:// URL, not {scheme or 'none'}://."
        )
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigError("The migration needs redis-py: pip install 'brainbot[redis]'.") from None
    options: dict[str, Any] = {}
    if scheme == "rediss" and tls_ca_file:
        options["ssl_ca_certs"] = tls_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    try:
        return aioredis.Redis.from_url(url, decode_responses=False, **options)
    except ValueError as exc:  # e.g. a port that is not a number; the URL is not repeated
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


async def read(redis: Any, keys: list[bytes]) -> list[Record]:
    """Type, TTL and value of each key (type ``none`` if it vanished)."""
    if not keys:
        return []
    with translated():
        return await _read(redis, keys)


async def _read(redis: Any, keys: list[bytes]) -> list[Record]:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    meta = await pipe.execute()
    types = [t.decode() if isinstance(t, bytes) else str(t) for t in meta[::2]]
    ttls = [int(t) for t in meta[1::2]]
    pipe = redis.pipeline(transaction=False)
    for key, kind in zip(keys, types, strict=True):
        if kind == "string":
            pipe.get(key)
        elif kind == "list":
            pipe.lrange(key, 0, -1)
        elif kind == "hash":
            pipe.hgetall(key)
        elif kind == "set":
            pipe.smembers(key)
        elif kind == "zset":
            pipe.zrange(key, 0, -1, withscores=True)
        else:
            pipe.exists(key)  # a placeholder answer for unsupported or vanished keys
    values = await pipe.execute(raise_on_error=False)
    records = []
    for key, kind, ttl, value in zip(keys, types, ttls, values, strict=True):
        if isinstance(value, Exception):  # it changed type between the two round trips
            kind, value = "changed", None
        elif kind in SUPPORTED and (value is None or value in ([], {}, set())):
            kind = "none"  # expired or deleted in between
        records.append(Record(key, kind, value, ttl))
    return records
