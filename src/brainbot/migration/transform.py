"""From a Redis record to the KV writes the new code reads, with the pre-flight checks.

* generic keys become exactly what ``KVStore`` reads (``storage/codec.py``);
* legacy conversation lists (``conversation:{id}``, a list of JSON messages) become the
  ``ConversationStore`` layout, one key per message, with ids derived from the messages'
  times and positions, so a re-run writes the same keys (no duplicates);
* legacy sessions (``session:{id}``, a JSON string) become ``SessionStore`` records.

The patterns are options. A list or string under those patterns that does not hold the
legacy format is migrated as a generic key instead, and reported, so nothing is dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from brainbot.kv.errors import KVValidationError
from brainbot.kv.limits import MAX_VALUE_BYTES, key_bytes
from brainbot.kv.namespace import PutItem
from brainbot.migration.source import SUPPORTED, Record
from brainbot.storage import codec
from brainbot.storage.codec import Item
from brainbot.storage.conversations import legacy_messages, message_item


@dataclass(frozen=True, slots=True)
class Options:
    prefix: str = ""
    """``BRAINBOT_KV_PREFIX`` of the stores that will read the data."""
    conversation_pattern: str = "conversation:{id}"
    session_pattern: str = "session:{id}"
    short_ttl: Literal["clamp", "skip"] = "clamp"
    """Keys with under 60 s left: ``clamp`` (migrate; KV keeps the entry 60 s, reads honour
    the exact expiry) or ``skip`` (report, do not write)."""
    session_lifetime: int = 3600
    """Lifetime given to legacy sessions that had no TTL."""

    def pattern(self, which: str) -> re.Pattern[str]:
        raw = self.conversation_pattern if which == "conversation" else self.session_pattern
        if raw.count("{id}") != 1:
            raise ValueError(f"The {which} pattern must contain {{id}} once: {raw!r}")
        head, tail = raw.split("{id}")
        return re.compile(re.escape(head) + r"(?P<id>[^/]+?)" + re.escape(tail) + r"\Z")


@dataclass(slots=True)
class Plan:
    """What the migration does with one Redis key."""

    record: Record
    kind: str = "generic"  # generic | conversation | session
    items: list[PutItem] = field(default_factory=list)
    skipped: str | None = None
    note: str | None = None

    @property
    def name(self) -> str:
        return self.record.key.decode("utf-8", "backslashreplace")


def checksum(record: Record) -> str:
    """A digest of the value, independent of the order Redis returned members in."""
    value = record.value
    if isinstance(value, bytes):
        parts: list[bytes] = [value]
    elif isinstance(value, dict):
        parts = sorted(k + b"\0" + v for k, v in value.items())
    elif isinstance(value, set):
        parts = sorted(value)
    elif record.type == "zset":
        parts = [m + b"\0" + repr(s).encode() for m, s in value]
    else:
        parts = list(value)
    digest = hashlib.sha256(record.type.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def size_of(record: Record) -> int:
    value = record.value
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + len(v) for k, v in value.items())
    if record.type == "zset":
        return sum(len(m) + 8 for m, _ in value)
    return sum(len(v) for v in value) if value else 0


def plan(record: Record, options: Options, now_ms: int) -> Plan:
    result = Plan(record)
    if record.type == "none":
        result.skipped = "expired during the run"
        return result
    if record.type == "changed":
        result.skipped = "changed type while being read (re-run the migration)"
        return result
    if record.type not in SUPPORTED:
        result.skipped = f"unsupported type: {record.type}"
        return result
    try:
        name = record.key.decode("utf-8")
        key_bytes(options.prefix + name)
    except UnicodeDecodeError:
        result.skipped = "key is not UTF-8 (KV keys are text)"
        return result
    except KVValidationError as exc:
        result.skipped = f"key refused by KV: {exc.message}"
        return result
    if size_of(record) > MAX_VALUE_BYTES:
        result.skipped = "value over KV's 25 MiB"
        return result
    expire_ms = now_ms + record.pttl if record.pttl > 0 else None
    if record.pttl > 0 and record.pttl < codec.KV_MIN_TTL_MS:
        if options.short_ttl == "skip":
            result.skipped = "under 60 s left (policy: skip)"
            return result
        result.note = "under 60 s left: clamped"
    kv_expiration = codec.kv_expiration(expire_ms, now_ms)

    conversation = options.pattern("conversation").match(name)
    if conversation and record.type == "list":
        decoded = legacy_messages(record.value, strict=True)
        if decoded is not None:
            result.kind = "conversation"
            for _, message in decoded:
                item = message_item(options.prefix, conversation["id"], message, None)
                result.items.append(
                    PutItem(item.key, item.value, kv_expiration, None, item.metadata)
                )
            return result
        result.note = "not legacy conversation messages: migrated as a plain list"
    session = options.pattern("session").match(name)
    if session and record.type == "string":
        try:
            legacy = json.loads(record.value)
        except ValueError:
            legacy = None
        if isinstance(legacy, dict):
            result.kind = "session"
            expires_ms = expire_ms or now_ms + options.session_lifetime * 1000
            body = {"data": legacy, "created": now_ms / 1000, "expires": expires_ms / 1000}
            value, metadata = codec.encode(Item("string", json.dumps(body).encode(), expires_ms))
            result.items.append(
                PutItem(
                    options.prefix + name,
                    value,
                    codec.kv_expiration(expires_ms, now_ms),
                    None,
                    metadata,
                )
            )
            return result
        result.note = "not a legacy JSON session: migrated as a plain string"
    data: Any = record.value
    if record.type == "zset":
        data = {m: float(s) for m, s in record.value}
    elif record.type == "list":
        data = list(record.value)
    value, metadata = codec.encode(Item(record.type, data, expire_ms))  # type: ignore[arg-type]
    result.items.append(PutItem(options.prefix + name, value, kv_expiration, None, metadata))
    return result
