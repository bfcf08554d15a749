"""brainbot's storage: Redis operations on Workers KV, with Redis kept for rollback.

Every caller gets its store from :func:`open_store`, which reads one switch,
``BRAINBOT_STORAGE_BACKEND``:

* ``kv`` (default): :class:`KVStore` on the configured namespace (embedded or Cloudflare);
* ``dual``: :class:`DualStore`, KV primary with every write also sent to Redis;
* ``redis``: redis-py's client itself, the rollback (needs the ``brainbot[redis]`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from brainbot.config import ConfigError, Settings
from brainbot.kv.factory import open_namespace
from brainbot.storage.dual import DualStore
from brainbot.storage.errors import (
    DataError,
    ResponseError,
    StoreError,
    TTLTooShort,
    UnsupportedOperation,
    WriteRateExceeded,
    WrongTypeError,
)
from brainbot.storage.kv_store import KVStore

if TYPE_CHECKING:
    Store = KVStore
else:
    Store = Any
"""What ``open_store`` returns: typed as ``KVStore``; the dual and Redis stores have the
same methods (they are redis-py's)."""


def open_kv_store(settings: Settings, *, decode_responses: bool = False) -> KVStore:
    cloud = settings.uses_cloudflare
    interval = settings.kv_key_write_interval
    window = settings.kv_read_own_writes_window
    return KVStore(
        open_namespace(settings),
        prefix=settings.kv_prefix,
        decode_responses=decode_responses,
        short_ttl=settings.kv_short_ttl,
        write_rate=settings.kv_write_rate,
        write_interval=interval if interval is not None else (1.0 if cloud else 0.0),
        recent_window=window if window is not None else (60.0 if cloud else 0.0),
    )


def open_redis(settings: Settings, *, decode_responses: bool = False) -> Any:
    if settings.redis_url is None:
        raise ConfigError(
            f"BRAINBOT_STORAGE_BACKEND={settings.storage_backend} needs BRAINBOT_REDIS_URL."
        )
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigError(
            "The Redis backend needs the optional extra: pip install 'brainbot[redis]'."
        ) from None
    return aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), decode_responses=decode_responses
    )


def open_store(settings: Settings | None = None, *, decode_responses: bool = False) -> Store:
    """The store every caller uses, chosen by ``BRAINBOT_STORAGE_BACKEND``."""
    settings = settings if settings is not None else Settings()
    backend = settings.storage_backend
    if backend == "redis":
        return cast(KVStore, open_redis(settings, decode_responses=decode_responses))
    kv = open_kv_store(settings, decode_responses=decode_responses)
    if backend == "dual":
        return cast(KVStore, DualStore(kv, open_redis(settings, decode_responses=decode_responses)))
    return kv


__all__ = [
    "DataError",
    "DualStore",
    "KVStore",
    "ResponseError",
    "Store",
    "StoreError",
    "TTLTooShort",
    "UnsupportedOperation",
    "WriteRateExceeded",
    "WrongTypeError",
    "open_kv_store",
    "open_store",
]
