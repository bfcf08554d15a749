"""From a Redis record to the KV writes the new code reads, with the pre-flight checks.

* generic keys become exactly what ``KVStore`` reads (``storage/codec.py``);
* legacy conversation lists (``conversation:{id}``, a list of JSON messages) become the
  ``ConversationStore`` layout, one key per message, with ids derived from the messages'
  times and positions, so a re-run writes the same keys (no duplicates);
* legacy sessions (``session:{id}``, a JSON string) are **not** carried over as sessions:
  a session id is a bearer credential, and the old ones were guessable (sequential) and
  slid for ever, so every user logs in again (with an identity token). What they say about
  ownership is kept: a session ``{"user": U, "conversation": C}`` makes U the owner of C;
* legacy owner sets (``user:{user}:conversations``, the old bot's set of a user's
  conversation ids) become the owners' index entries of ``ConversationStore``.

A conversation no legacy record names an owner for stays reachable by operators only.
The patterns are options. A key under those patterns that does not hold the legacy format
is migrated as a generic key instead, and reported, so nothing is dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from brainbot.errors import InvalidInput
from brainbot.kv.errors import KVValidationError
from brainbot.kv.limits import MAX_VALUE_BYTES, key_bytes
from brainbot.kv.namespace import PutItem
from brainbot.migration.source import SUPPORTED, Record
from brainbot.storage import codec
from brainbot.storage.codec import Item
from brainbot.storage.conversations import legacy_messages, message_item, owner_item


def owner_items(
    claims: dict[str, set[str]], prefix: str, now_ms: int
) -> tuple[list[PutItem], list[str]]:
    """The owners' index entries for conversations exactly one user claims, and the
    conversations several users claim (reachable by operators only)."""
    items, conflicts = [], []
    for cid, owners in sorted(claims.items()):
        if len(owners) == 1:
            items.append(owner_item(prefix, next(iter(owners)), cid, now_ms / 1000))
        else:
            conflicts.append(cid)
    return items, conflicts


@dataclass(frozen=True, slots=True)
class Options:
    prefix: str = ""
    """``BRAINBOT_KV_PREFIX`` of the stores that will read the data."""
    conversation_pattern: str = "conversation:{id}"
    session_pattern: str = "session:{id}"
    owner_pattern: str = "user:{id}:conversations"
    """Legacy sets of a user's conversation ids (``{id}`` is the user)."""
    short_ttl: Literal["clamp", "skip"] = "clamp"
    """Keys with under 60 s left: ``clamp`` (migrate; KV keeps the entry 60 s, reads honour
    the exact expiry) or ``skip`` (report, do not write)."""

    def __post_init__(self) -> None:
        for which in ("conversation", "session", "owner"):
            self.pattern(which)  # a bad pattern is refused before anything is read

    def pattern(self, which: str) -> re.Pattern[str]:
        raw = {
            "conversation": self.conversation_pattern,
            "session": self.session_pattern,
            "owner": self.owner_pattern,
        }[which]
        if raw.count("{id}") != 1:
            raise InvalidInput(f"The {which} pattern must contain {{id}} once: {raw!r}")
        head, tail = raw.split("{id}")
        # a user may hold any character (a "/" included); a conversation id may not
        body = r"(?P<id>.+?)" if which == "owner" else r"(?P<id>[^/]+?)"
        return re.compile(re.escape(head) + body + re.escape(tail) + r"\Z", re.DOTALL)


@dataclass(slots=True)
class Plan:
    """What the migration does with one Redis key."""

    record: Record
    kind: str = "generic"  # generic | conversation | session | owners
    items: list[PutItem] = field(default_factory=list)
    claims: list[tuple[str, str]] = field(default_factory=list)
    """(owner, conversation) the legacy data names: written once the whole source is read,
    so a conversation two users claim (the old service let anyone add one to their set)
    goes to nobody (operators only) instead of to both."""
    skipped: str | None = None
    note: str | None = None

    @property
    def name(self) -> str:
        """The key as reports show it. A legacy session's key holds its bearer id (valid
        again on Redis after a rollback): reports show a digest of it instead."""
        if self.kind == "session":
            return "session-key:sha256:" + hashlib.sha256(self.record.key).hexdigest()[:32]
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


def _owner_and_conversation(owner: object, cid: object) -> bool:
    """Whether a legacy record names a usable owner and conversation id."""
    if not isinstance(owner, str) or not isinstance(cid, str) or not owner or not cid:
        return False
    try:
        return "/" not in cid and len(cid.encode()) <= 128 and len(owner.encode()) <= 256
    except UnicodeEncodeError:
        return False


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
            owner, cid = legacy.get("user"), legacy.get("conversation")
            if _owner_and_conversation(owner, cid):
                assert isinstance(owner, str)
                assert isinstance(cid, str)
                result.claims.append((owner, cid))
                result.note = "legacy session invalidated (log in again); its owner recorded"
            else:
                result.note = "legacy session invalidated (log in again)"
            return result
        result.note = "not a legacy JSON session: migrated as a plain string"
    owners = options.pattern("owner").match(name)
    if owners and record.type == "set":
        user = owners["id"]
        members = [m.decode("utf-8", "replace") for m in record.value]
        usable = [cid for cid in members if _owner_and_conversation(user, cid)]
        if usable and len(usable) == len(members):
            result.kind = "owners"
            result.claims += [(user, cid) for cid in usable]
            return result
        result.note = "not a legacy owner set: migrated as a plain set"
    data: Any = record.value
    if record.type == "zset":
        data = {m: float(s) for m, s in record.value}
    elif record.type == "list":
        data = list(record.value)
    value, metadata = codec.encode(Item(record.type, data, expire_ms))  # type: ignore[arg-type]
    result.items.append(PutItem(options.prefix + name, value, kv_expiration, None, metadata))
    return result
