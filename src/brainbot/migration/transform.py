"""From a Redis record to the KV writes the new code reads, with the pre-flight checks.

* generic keys become exactly what ``KVStore`` reads (``storage/codec.py``), a hash with
  its fields in byte order (``ordered_hash``): Redis keeps no order a digest could rely on;
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
is migrated as a generic key instead, and reported, so nothing is dropped. A generic key
whose name falls under the bot's own layouts (``conv/``, ``user/``, ``session:``) is
refused and reported: written, it would read as a message, an owner or a session.

Every entry carries, in its metadata, a **stamp** (``"_m": "<mark>.<run tag>.<digest>"``,
about 50 bytes, under a name none of the bot's own layouts uses): the migration's mark (the
same for every run of one migration: the source, the patterns, the prefix), the run's tag,
and a digest of the value. The bot's writes build their metadata afresh, so a stamp says
"this migration wrote it and nobody changed it since". That is how a later run, ``verify``
and ``rollback`` tell such entries from live data, with a listing (1,000 entries a request)
instead of reading values.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import orjson

from brainbot import json_bytes
from brainbot.errors import InvalidInput
from brainbot.kv.errors import KVValidationError
from brainbot.kv.limits import MAX_VALUE_BYTES, key_bytes
from brainbot.kv.namespace import PutItem
from brainbot.migration.source import SUPPORTED, Encoded, Record
from brainbot.storage import codec
from brainbot.storage.codec import Item
from brainbot.storage.conversations import legacy_items, owner_item

RESERVED = ("conv/", "user/", "session:", "__brainbot_health__")
"""Where the bot's own layouts live: a generic key here would read as something else."""


_BLAKE2B_96 = hashlib.blake2b(digest_size=12)
"""Copied for each digest: a third cheaper than making one (its arguments parsed again)."""


SORTED_FIELDS = 200_000
"""A streamed hash of up to this many fields is put in field order (its parsed JSON: some
30 MB at most); a bigger one keeps HSCAN's order (verify may call it "value differs"
after its order changes in Redis)."""


def ordered_hash(value: bytes, binary: bool) -> bytes:
    """A hash's KV value (``codec``'s layout) with its fields in byte order.

    HGETALL answers a small hash in insertion order and a big one in its hash table's
    order, which a Redis restart or a replica reseeds, so the same fields come back in
    another order and Redis's order would digest differently. Sorted, equal fields digest
    equal. Text sorts as its UTF-8 bytes do (code point order); base64, by its bytes."""
    body: dict[str, str] = orjson.loads(value)
    if binary:
        ordered = sorted(body.items(), key=lambda pair: base64.b64decode(pair[0]))
    else:
        ordered = sorted(body.items())
    return json_bytes.dumps(dict(ordered))


def digest(value: bytes | str) -> str:
    """The digest a migrated entry carries of its value (96 bits of BLAKE2b)."""
    hasher = _BLAKE2B_96.copy()
    hasher.update(value.encode() if isinstance(value, str) else value)
    return hasher.hexdigest()


STAMP = "_m"


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a migrated entry's metadata says of it."""

    mark: str
    run: str
    digest: str


def stamp_of(metadata: object) -> Stamp | None:
    """The stamp in an entry's metadata, if it has a well-formed one."""
    text = metadata.get(STAMP) if isinstance(metadata, dict) else None
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    return Stamp(*parts) if len(parts) == 3 else None


def marked(item: PutItem, mark: str, tag: str) -> PutItem:
    """``item`` stamped with the migration's mark, the run's tag and its value's digest
    (its metadata dict is the plan's own, made for it: stamped in place)."""
    return _stamped(item, f"{mark}.{tag}.")


def _stamped(item: PutItem, head: str) -> PutItem:
    """``marked``, with the stamp's ``"<mark>.<tag>."`` made once for a plan's items."""
    stamp = head + digest(item.value)
    if isinstance(item.metadata, dict):
        item.metadata[STAMP] = stamp
        return item
    return PutItem(item.key, item.value, item.expiration, item.expiration_ttl, {STAMP: stamp})


def digest_of(item: PutItem) -> str | None:
    """The digest in a stamped item's metadata (the stamp's last 24 characters)."""
    meta = item.metadata
    stamp = meta.get(STAMP) if isinstance(meta, dict) else None
    return stamp[-24:] if isinstance(stamp, str) else None


def owner_items(
    claims: dict[str, set[str]], prefix: str, now_ms: int, mark: str = "", tag: str = ""
) -> tuple[list[PutItem], list[str]]:
    """The owners' index entries for conversations exactly one user claims, and the
    conversations several users claim (reachable by operators only)."""
    items, conflicts = [], []
    for cid, owners in sorted(claims.items()):
        if len(owners) == 1:
            item = owner_item(prefix, next(iter(owners)), cid, now_ms / 1000)
            items.append(marked(item, mark, tag) if mark else item)
        else:
            conflicts.append(cid)
    return items, conflicts


@cache
def _pattern(raw: str, owner: bool) -> re.Pattern[str]:
    head, tail = raw.split("{id}")
    # a user may hold any character (a "/" included); a conversation id may not
    body = r"(?P<id>.+?)" if owner else r"(?P<id>[^/]+?)"
    return re.compile(re.escape(head) + body + re.escape(tail) + r"\Z", re.DOTALL)


@cache
def _patterns(conversation: str, session: str, owner: str) -> dict[str, re.Pattern[str]]:
    """The three patterns compiled, once per set (``pattern`` runs three times a key)."""
    compiled = {}
    for which, raw in (("conversation", conversation), ("session", session), ("owner", owner)):
        if raw.count("{id}") != 1:
            raise InvalidInput(f"The {which} pattern must contain {{id}} once: {raw!r}")
        compiled[which] = _pattern(raw, which == "owner")
    return compiled


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
        self.pattern("conversation")  # a bad pattern is refused before anything is read

    def whole(self, key: bytes, kind: str) -> bool:
        """Whether the migration must see a container's elements: a legacy layout's."""
        which = {"list": "conversation", "set": "owner"}.get(kind)
        if which is None:
            return False
        return bool(self.pattern(which).match(key.decode("utf-8", "replace")))

    def pattern(self, which: str) -> re.Pattern[str]:
        return _patterns(self.conversation_pattern, self.session_pattern, self.owner_pattern)[which]


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
    size: int = 0
    """The bytes of the record's data (``size_of``), for keys not skipped."""

    @property
    def name(self) -> str:
        """The key as reports show it. A legacy session's key holds its bearer id (valid
        again on Redis after a rollback): reports show a digest of it instead."""
        if self.kind == "session":
            return "session-key:sha256:" + hashlib.sha256(self.record.key).hexdigest()[:32]
        return self.record.key.decode("utf-8", "backslashreplace")


def size_of(record: Record) -> int:
    """The bytes of a record's data (its size as read, when it was not read)."""
    value = record.value
    if value is None:
        return record.size
    if isinstance(value, Encoded):
        return value.size
    if isinstance(value, bytes):
        return len(value)
    # (lengths summed by map, in C, not by a generator)
    if isinstance(value, dict):
        return sum(map(len, value)) + sum(map(len, value.values()))
    if record.type == "zset":
        return sum(len(m) for m, _ in value) + 8 * len(value)
    return sum(map(len, value)) if value else 0


def expiry_of(record: Record, now_ms: int) -> int | None:
    """The exact expiry (epoch ms) of a key read with ``record.pttl`` left, counted from
    when that was read (``now_ms`` if not known). A PTTL of 0 is a key in its last
    millisecond (Redis expires it once its clock passes the expiry), not one without."""
    if record.pttl < 0:  # -1: no expiry (-2: gone)
        return None
    return (now_ms if record.read_ms is None else record.read_ms) + record.pttl


def _conversation_id(cid: object) -> bool:
    """Whether ``cid`` is a conversation id the bot reads (1..128 bytes, no "/")."""
    if not isinstance(cid, str) or not cid or "/" in cid:
        return False
    try:
        return len(cid.encode()) <= 128
    except UnicodeEncodeError:
        return False


def _owner_and_conversation(owner: object, cid: object) -> bool:
    """Whether a legacy record names a usable owner and conversation id."""
    if not isinstance(owner, str) or not owner or not _conversation_id(cid):
        return False
    try:
        return len(owner.encode()) <= 256
    except UnicodeEncodeError:
        return False


def plan(record: Record, options: Options, now_ms: int, mark: str = "", tag: str = "") -> Plan:
    """What to write for ``record``; with ``mark``, every item marked (``marked``)."""
    result = _plan(record, options, now_ms)
    if mark and result.items:
        head = f"{mark}.{tag}."
        result.items = [_stamped(item, head) for item in result.items]
    return result


def _plan(record: Record, options: Options, now_ms: int) -> Plan:
    result = Plan(record)
    if record.type not in SUPPORTED:  # (one test for the supported, most keys)
        if record.type == "none":
            result.skipped = "expired during the run"
        elif record.type == "changed":
            result.skipped = "changed type while being read (re-run the migration)"
        else:
            result.skipped = f"unsupported type: {record.type}"
        return result
    if record.oversize:
        result.skipped = "value over KV's 25 MiB (not read)"
        return result
    try:
        name = record.key.decode("utf-8")
        key = options.prefix + name
        key_bytes(key)
    except UnicodeDecodeError:
        result.skipped = "key is not UTF-8 (KV keys are text)"
        return result
    except KVValidationError as exc:
        result.skipped = f"key refused by KV: {exc.message}"
        return result
    result.size = size_of(record)
    if result.size > MAX_VALUE_BYTES:
        result.skipped = "value over KV's 25 MiB"
        return result
    expire_ms = expiry_of(record, now_ms)
    if expire_ms is not None and expire_ms - now_ms < codec.KV_MIN_TTL_MS:
        if options.short_ttl == "skip":
            result.skipped = "under 60 s left (policy: skip)"
            return result
        result.note = "under 60 s left: clamped"
    kv_expiration = codec.kv_expiration(expire_ms, now_ms)

    streamed = isinstance(record.value, Encoded)  # too big to be read as Python values
    # each legacy layout is of one type: other types need no pattern match
    conversation = options.pattern("conversation").match(name) if record.type == "list" else None
    if conversation and streamed:
        result.note = "too big to read as legacy messages: migrated as a plain list"
    elif conversation and not _conversation_id(conversation["id"]):
        result.note = "conversation id over 128 bytes: migrated as a plain list"
    elif conversation:
        items = legacy_items(options.prefix, conversation["id"], record.value, kv_expiration)
        if items is not None:  # message_item of each of legacy_messages(..., strict=True)
            # elements with one id are one KV entry, the last one: planned once, as KV holds it
            items = list({item.key: item for item in items}.values())
            try:  # a message's key is longer than the list's: one over KV's limit stops
                key_bytes(max((item.key for item in items), key=len))  # (ids are ASCII)
            except KVValidationError as exc:  # the run, at its bulk write
                result.skipped = f"key refused by KV: {exc.message}"
                return result
            result.kind = "conversation"
            result.items = items
            return result
        result.note = "not legacy conversation messages: migrated as a plain list"
    session = options.pattern("session").match(name) if record.type == "string" else None
    if session:
        try:
            legacy = orjson.loads(record.value)
        except orjson.JSONDecodeError:
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
    owners = options.pattern("owner").match(name) if record.type == "set" else None
    if owners and streamed:
        result.note = "too big to read as a legacy owner set: migrated as a plain set"
    elif owners:
        user = owners["id"]
        members = [m.decode("utf-8", "replace") for m in record.value]
        usable = [cid for cid in members if _owner_and_conversation(user, cid)]
        if usable and len(usable) == len(members):
            result.kind = "owners"
            result.claims += [(user, cid) for cid in usable]
            return result
        result.note = "not a legacy owner set: migrated as a plain set"
    if name.startswith(RESERVED):
        result.note = None
        result.skipped = "reserved name: the bot's own layout (rename it in Redis to migrate it)"
        return result
    data: Any = record.value
    if isinstance(data, Encoded):
        value, metadata = data.kv, Item(record.type, None, expire_ms).metadata(binary=data.binary)  # type: ignore[arg-type]
        if record.type == "hash" and data.count <= SORTED_FIELDS:
            value = ordered_hash(value, data.binary)
    else:
        if record.type == "hash":  # in byte order: ordered_hash
            data = dict(sorted(record.value.items()))
        elif record.type == "zset":
            data = dict(record.value)
        elif record.type == "list":
            data = list(record.value)
        value, metadata = codec.encode(Item(record.type, data, expire_ms))  # type: ignore[arg-type]
    if len(value) > MAX_VALUE_BYTES:
        result.skipped = "value over KV's 25 MiB (as KV stores it)"
        return result
    result.items.append(PutItem(key, value, kv_expiration, None, metadata))
    return result
