"""Cloudflare Workers KV's limits, and the one set of checks every implementation runs.

The embedded KV, the REST client and the local API server all call these functions,
so a key, value, metadata or expiry that one of them accepts, all of them accept, and
the error for one that breaks a rule is the same typed error with Cloudflare's text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import orjson

from brainbot.kv.errors import (
    InvalidCursor,
    InvalidExpiration,
    InvalidExpirationTTL,
    InvalidKey,
    InvalidListLimit,
    InvalidMetadata,
    InvalidValue,
    KeyTooLong,
    KVValidationError,
    MetadataTooLarge,
    ValueTooLarge,
)

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024  # 26,214,400
MAX_METADATA_BYTES = 1024
MAX_SAFE_INTEGER = 2**53
"""Metadata is kept as JavaScript values: integers past this come back as the nearest double."""
MIN_EXPIRATION_TTL = 60
MAX_EXPIRATION = 2**31 - 1  # workerd stores expirations as 32-bit seconds
MIN_LIST_LIMIT = 10
MAX_LIST_LIMIT = 1000
BULK_WRITE_MAX_ITEMS = 10_000
BULK_WRITE_MAX_BYTES = 100_000_000
BULK_DELETE_MAX_KEYS = 10_000
BULK_GET_MAX_KEYS = 100

JSON = None | bool | int | float | str | Sequence["JSON"] | Mapping[str, "JSON"]


def _utf8_name(name: object, what: str) -> bytes:
    if not isinstance(name, str):
        raise InvalidKey(f"{what} must be strings, not {type(name).__name__}.")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} must be valid UTF-8 (found a lone surrogate).") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise KeyTooLong(
            f"UTF-8 encoded length of {len(encoded)} exceeds key length limit of {MAX_KEY_BYTES}."
        )
    return encoded


def key_bytes(key: object) -> bytes:
    """Return the key's UTF-8 bytes, or raise the typed error for an illegal key name."""
    if key in ("", ".", ".."):
        raise InvalidKey(f"Illegal key name {key!r}: keys cannot be empty, '.' or '..'.")
    return _utf8_name(key, "Key names")


def check_prefix(prefix: object) -> bytes:
    """A list prefix may be empty but otherwise follows the key rules for length and encoding."""
    return _utf8_name(prefix, "Prefixes")


def value_bytes(value: object) -> bytes:
    """Return the value as bytes (str is UTF-8 encoded), or raise if it is too large."""
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValue("String values must be valid UTF-8.") from None
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise InvalidValue(f"Values must be bytes or str, not {type(value).__name__}.")
    if len(data) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"Value length of {len(data)} exceeds limit of {MAX_VALUE_BYTES}.")
    return data


def metadata_json(metadata: object) -> str | None:
    """Serialise metadata the way Workers does (compact JSON) and check its size."""
    if metadata is None:
        return None
    try:  # orjson: compact UTF-8 JSON, as Workers writes it, several times faster than json
        encoded = orjson.dumps(metadata)
    except TypeError as exc:  # non-text keys, huge ints, lone surrogates, other types
        raise InvalidMetadata(f"Metadata must be JSON-serialisable: {exc}.") from None
    text = encoded.decode("utf-8")
    if orjson.loads(encoded) != metadata:  # NaN and infinities (null), tuples (lists)...
        raise InvalidMetadata(
            "Metadata must be plain JSON values (dicts with str keys, lists, str, numbers, "
            "bool, None): it would not read back equal."
        )
    size = len(encoded)
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(f"Metadata length of {size} exceeds limit of {MAX_METADATA_BYTES}.")
    return text


def _whole_seconds(name: str, value: object, error: type[KVValidationError]) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"Invalid {name} of {value!r}. Please specify an integer.")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise error(f"Invalid {name} of {value!r}. Please specify an integer.")
    return int(value)


def absolute_expiration(
    *, expiration: object = None, expiration_ttl: object = None, now: float
) -> int | None:
    """Check the two ways of giving an expiry and return the absolute epoch second, or None.

    Giving both is ambiguous (Cloudflare silently lets the TTL win), so it is an error here.
    """
    if expiration is not None and expiration_ttl is not None:
        raise InvalidExpiration("Give either expiration or expiration_ttl, not both.")
    if expiration_ttl is not None:
        ttl = _whole_seconds("expiration_ttl", expiration_ttl, InvalidExpirationTTL)
        if int(now) + ttl > MAX_EXPIRATION:
            raise InvalidExpirationTTL(
                f"Invalid expiration_ttl of {ttl}. It ends after {MAX_EXPIRATION} "
                "seconds since the epoch, the latest expiry KV stores."
            )
        if ttl < MIN_EXPIRATION_TTL:
            raise InvalidExpirationTTL(
                f"Invalid expiration_ttl of {ttl}. "
                f"Expiration TTL must be at least {MIN_EXPIRATION_TTL}."
            )
        return int(now) + ttl
    if expiration is not None:
        at = _whole_seconds("expiration", expiration, InvalidExpiration)
        if at > MAX_EXPIRATION:
            raise InvalidExpiration(
                f"Invalid expiration of {at}. Please specify an integer no greater than "
                f"{MAX_EXPIRATION}."
            )
        if at <= int(now):
            raise InvalidExpiration(
                f"Invalid expiration of {at}. Please specify integer greater than "
                "the current number of seconds since the UNIX epoch."
            )
        if at < int(now) + MIN_EXPIRATION_TTL:
            raise InvalidExpiration(
                f"Invalid expiration of {at}. Expiration times must be at least "
                f"{MIN_EXPIRATION_TTL} seconds in the future."
            )
        return at
    return None


class PutLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def value(self) -> bytes | str: ...
    @property
    def expiration(self) -> int | None: ...
    @property
    def expiration_ttl(self) -> int | None: ...
    @property
    def metadata(self) -> JSON: ...


def validate_put(item: PutLike, now: float) -> tuple[bytes, bytes, int | None, str | None]:
    """Every rule a write must pass: returns key and value bytes, the absolute expiry and
    the metadata JSON text, or raises the typed error of the first rule broken."""
    expiration, expiration_ttl = item.expiration, item.expiration_ttl
    return (
        key_bytes(item.key),
        value_bytes(item.value),
        # most writes have no expiry: that needs no call (a keyword call costs 0.2 us)
        None
        if expiration is None and expiration_ttl is None
        else absolute_expiration(expiration=expiration, expiration_ttl=expiration_ttl, now=now),
        metadata_json(item.metadata),
    )


def list_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidListLimit(f"Invalid key_count_limit of {limit!r}. Please specify an integer.")
    if limit > MAX_LIST_LIMIT:
        raise InvalidListLimit(
            f"Invalid key_count_limit of {limit}. "
            f"Please specify an integer less than {MAX_LIST_LIMIT}."
        )
    if limit < MIN_LIST_LIMIT:
        raise InvalidListLimit(
            f"Invalid key_count_limit of {limit}. "
            f"Please specify an integer greater than {MIN_LIST_LIMIT}."
        )
    return limit


def check_cursor(cursor: object) -> str | None:
    if cursor is None or cursor == "":
        return None
    if not isinstance(cursor, str):
        raise InvalidCursor(f"Invalid cursor {cursor!r}: cursors are strings.")
    return cursor
