"""Errors of the Redis-compatible stores, shaped like redis-py's so ported code keeps working.

    StoreError
    ├── ResponseError            what Redis itself would answer with an error
    │   └── WrongTypeError         "WRONGTYPE Operation against a key holding the wrong kind..."
    ├── DataError                a value redis-py refuses to encode (bool, None, objects)
    ├── TTLTooShort              a TTL under KV's 60 s floor while the policy is "reject"
    ├── WriteRateExceeded        one key written faster than 1/s while the policy is "error"
    └── UnsupportedOperation     a Redis option KV cannot honour (named in the message)

When redis-py is installed, ``ResponseError`` and ``DataError`` also subclass redis-py's
classes of the same name, so ``except redis.exceptions.ResponseError`` in ported code
still catches them.

Errors of the KV namespace layer underneath (``brainbot.kv.errors``: invalid or too-long
keys, values over 25 MiB, service failures) pass through unchanged.
"""

from __future__ import annotations

try:  # optional: redis-py is only the rollback extra
    from redis.exceptions import DataError as _RedisDataError
    from redis.exceptions import ResponseError as _RedisResponseError
except ImportError:  # pragma: no cover - exercised only without the extra

    class _RedisResponseError(Exception):  # type: ignore[no-redef]
        pass

    class _RedisDataError(Exception):  # type: ignore[no-redef]
        pass


class StoreError(Exception):
    """Root of the errors raised by ``KVStore`` and the other stores of ``open_store()``."""


class ResponseError(StoreError, _RedisResponseError):
    """The answer Redis would give as an error reply; the message is Redis's text."""


class WrongTypeError(ResponseError):
    def __init__(self) -> None:
        super().__init__("WRONGTYPE Operation against a key holding the wrong kind of value")


class DataError(StoreError, _RedisDataError, ValueError):
    """A value that cannot be stored (redis-py raises its DataError for the same inputs)."""


class TTLTooShort(StoreError, ValueError):
    """A TTL under KV's 60-second floor while ``BRAINBOT_KV_SHORT_TTL=reject``."""


class WriteRateExceeded(StoreError):
    """A second write to one key within a second while ``BRAINBOT_KV_WRITE_RATE=error``."""


class UnsupportedOperation(StoreError, NotImplementedError):
    """A Redis option this store does not implement; the message names it."""
