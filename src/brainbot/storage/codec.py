"""How one Redis key (any type, with its TTL) is laid out as one KV entry.

The same encoding is read by ``KVStore`` and written by the migration, so a migrated key
reads back exactly as Redis held it.

* **metadata** ``{"t": type, "x": expiry in epoch ms (if any), "e": "b" (if base64)}``.
  The type and the exact expiry travel in metadata, so ``list`` (which returns metadata)
  answers ``SCAN ... TYPE`` and skips logically expired keys without reading values.
* **value**: a string is its raw bytes. A container is JSON: list ``[e, ...]``, set
  ``[m, ...]`` (sorted), hash ``{field: value}``, sorted set ``[[member, score], ...]``
  ordered by (score, member). Elements are UTF-8 text when every element is; otherwise
  all are base64 and metadata says ``"e": "b"``. Infinite scores are ``"inf"``/``"-inf"``.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

import orjson

from brainbot import json_bytes
from brainbot.kv.limits import MAX_EXPIRATION
from brainbot.kv.namespace import Entry

RedisType = Literal["string", "list", "hash", "set", "zset"]
TYPES: tuple[RedisType, ...] = ("string", "list", "hash", "set", "zset")
Data = bytes | list[bytes] | dict[bytes, bytes] | set[bytes] | dict[bytes, float]


@dataclass(slots=True)
class Item:
    """One Redis value: its type, its data, and its expiry in epoch milliseconds."""

    type: RedisType
    data: Any
    expire_ms: int | None = None

    def metadata(self, *, binary: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"t": self.type}
        if self.expire_ms is not None:
            meta["x"] = self.expire_ms
        if binary:
            meta["e"] = "b"
        return meta


def _texts(elements: list[bytes]) -> tuple[list[str], bool]:
    try:
        return [e.decode("utf-8") for e in elements], False
    except UnicodeDecodeError:
        return [base64.b64encode(e).decode("ascii") for e in elements], True


_BY_SCORE = itemgetter(1, 0)
"""A sorted set's (member, score) pairs in Redis's order: by score, then member."""


def _score_json(score: float) -> float | str:
    if math.isinf(score):
        return "inf" if score > 0 else "-inf"
    return score


def encode(item: Item) -> tuple[bytes, dict[str, Any]]:
    """The KV value and metadata for ``item``."""
    if item.type == "string":
        return bytes(item.data), item.metadata()
    body: Any
    if item.type == "list":
        body, binary = _texts(list(item.data))
    elif item.type == "set":
        body, binary = _texts(sorted(item.data))
    elif item.type == "hash":
        try:  # in one pass when every field and value is text, as most are
            body = {f.decode("utf-8"): v.decode("utf-8") for f, v in item.data.items()}
            binary = False
        except UnicodeDecodeError:
            flat, binary = _texts([b for pair in item.data.items() for b in pair])
            body = dict(zip(flat[::2], flat[1::2], strict=True))
    else:
        ordered = sorted(item.data.items(), key=_BY_SCORE)
        members, binary = _texts([m for m, _ in ordered])
        body = [[m, _score_json(s)] for m, (_, s) in zip(members, ordered, strict=True)]
    return json_bytes.dumps(body), item.metadata(binary=binary)  # compact UTF-8 JSON


def decode(entry: Entry) -> Item:
    """The Redis value stored in ``entry``; an entry without our metadata is a string."""
    meta = entry.metadata if isinstance(entry.metadata, dict) else {}
    kind = meta.get("t", "string")
    expire_ms = meta.get("x")
    if kind == "string" or kind not in TYPES:
        return Item("string", entry.value, expire_ms)
    binary = meta.get("e") == "b"

    def raw(text: str) -> bytes:
        return base64.b64decode(text) if binary else text.encode("utf-8")

    body = orjson.loads(entry.value)
    if kind == "list":
        return Item("list", [raw(e) for e in body], expire_ms)
    if kind == "set":
        return Item("set", {raw(e) for e in body}, expire_ms)
    if kind == "hash":
        return Item("hash", {raw(f): raw(v) for f, v in body.items()}, expire_ms)
    return Item("zset", {raw(m): float(s) for m, s in body}, expire_ms)


def type_of(metadata: object) -> RedisType:
    """The Redis type recorded in a list entry's metadata (no metadata: a plain string)."""
    if isinstance(metadata, dict) and metadata.get("t") in TYPES:
        return metadata["t"]  # type: ignore[no-any-return]
    return "string"


def expiry_of(metadata: object) -> int | None:
    if isinstance(metadata, dict) and isinstance(metadata.get("x"), int):
        return metadata["x"]  # type: ignore[no-any-return]
    return None


def copy(item: Item) -> Item:
    """An independent copy (containers are mutable; callers change their copy freely)."""
    data = item.data
    if isinstance(data, list | set | dict):
        data = type(data)(data)
    return Item(item.type, data, item.expire_ms)


def size(item: Item | None) -> int:
    """Rough bytes held by ``item`` (for bounding the memory of recent writes)."""
    if item is None:
        return 64
    data = item.data
    if isinstance(data, bytes):
        return 64 + len(data)
    if isinstance(data, dict):
        return 64 + sum(
            len(k) + (len(v) if isinstance(v, bytes) else 8) + 32 for k, v in data.items()
        )
    return 64 + sum(len(e) + 32 for e in data)


KV_MIN_TTL_MS = 60_000


def kv_expiration(expire_ms: int | None, now_ms: int) -> int | None:
    """The KV entry's own expiry for an exact expiry ``expire_ms``: the same second, or
    KV's 60-second floor (plus one second for clocks and transit); None past 2038, when
    only the metadata keeps it. Reads enforce the exact expiry from metadata."""
    if expire_ms is None:
        return None
    seconds = math.ceil(max(expire_ms, now_ms + KV_MIN_TTL_MS + 1000) / 1000)
    return seconds if seconds <= MAX_EXPIRATION else None
