"""brainbot's storage: Redis operations on Workers KV, with Redis kept for rollback.

* :class:`KVStore`: redis-py's data commands on one KV namespace (the default backend);
* :class:`DualStore`: the cut-over mode, KV primary with every write also sent to Redis;
* :class:`RedisBackend`: redis-py's client, its connection errors translated (the rollback);
* :class:`Store`: what all three are, and what ``brainbot.composition.open_store()`` returns
  according to ``BRAINBOT_STORAGE_BACKEND`` (``kv``, ``dual``, ``redis``).
"""

from __future__ import annotations

from brainbot.storage.dual import DualStore
from brainbot.storage.errors import (
    DataError,
    RedisUnavailable,
    ResponseError,
    StoreError,
    TTLTooShort,
    UnsupportedOperation,
    WriteRateExceeded,
    WrongTypeError,
)
from brainbot.storage.kv_store import KVStore
from brainbot.storage.protocol import Store
from brainbot.storage.redis_backend import RedisBackend

__all__ = [
    "DataError",
    "DualStore",
    "KVStore",
    "RedisBackend",
    "RedisUnavailable",
    "ResponseError",
    "Store",
    "StoreError",
    "TTLTooShort",
    "UnsupportedOperation",
    "WriteRateExceeded",
    "WrongTypeError",
]
