"""Errors of the Redis-compatible stores, shaped like redis-py's so ported code keeps working.

The classes live in :mod:`brainbot.errors`, where the whole tree is drawn; this module
re-exports the ones the stores raise. When redis-py is installed, ``ResponseError``,
``DataError`` and ``RedisUnavailable`` also subclass redis-py's classes, so
``except redis.exceptions.ResponseError`` in ported code still catches them.
"""

from __future__ import annotations

from brainbot.errors import (
    DataError,
    RedisUnavailable,
    ResponseError,
    StoreError,
    TTLTooShort,
    UnsupportedOperation,
    WriteRateExceeded,
    WrongTypeError,
)

__all__ = [
    "DataError",
    "RedisUnavailable",
    "ResponseError",
    "StoreError",
    "TTLTooShort",
    "UnsupportedOperation",
    "WriteRateExceeded",
    "WrongTypeError",
]
