"""Conversation history, laid out for KV's rules (and for Redis, for the rollback).

On KV, one growing value per conversation would lose messages (last writer wins, no
compare-and-swap) and hit the 1 write/s per key limit. Instead every message is its own
key, so concurrent appends never touch the same key::

    {prefix}conv/{conversation}/{13-digit inverted ms}.{writer}      one message
    {prefix}user/{owner digest}/{conversation}                      the owner's index entry

* **Ownership.** Every conversation has one owner: the identity that created it (ids come
  from the server) or, for migrated history, the one the legacy data names. The owner's
  index entry is the proof of ownership (one read to check); a conversation without one is
  reachable by an operator only. The owner (a JWT ``sub``) enters key names only as a
  digest, so any identity fits in a key and none can reach another's prefix.
* The message id sorts **newest first** (inverted time): KV lists in ascending byte order
  only, so the newest N messages are the first N names of one ``list`` call.
* Small messages (role, time, content, metadata) ride in the key's **metadata**, which
  ``list`` returns: the newest 50 messages cost 1 request, or 2 when some are too big for
  metadata (one ``bulk/get`` for those). Big ones carry their size, so a reader with a byte
  budget stops before reading more than it may answer.
* A **turn** (the user's message and the reply) is one bulk write: stored whole, or (if the
  service loses part of it) the part that landed is deleted again.
* Within a process ids strictly increase (a writer's own order is kept even within a
  millisecond); across processes, messages order by time, ties by writer id.
* **Retention.** At most ``max_messages`` messages and ``max_bytes`` bytes (and, with
  ``max_age``, nothing older) are kept: reads never show more, and every ``trim_every``
  appends a process deletes what is beyond. On KV each message also carries its own expiry.
* Read-your-writes: on an eventually consistent namespace the store's namespace is wrapped
  in :class:`~brainbot.kv.overlay.ReadYourWrites` (shared with ``KVStore``), which merges
  this process's appends and deletes into listings that have not caught up yet.
* Entries that do not decode as messages (written by something else) are skipped and
  logged, never answered as an error.

On Redis (``BRAINBOT_STORAGE_BACKEND=redis``) a conversation is the legacy layout, a list
``conversation:{id}`` of JSON messages (RPUSH is atomic there) and the owner's set
``user:{owner}:conversations``, so a rollback reads what the bot wrote; ``dual`` writes both
layouts and reads KV.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from brainbot.errors import ConversationError, Unavailable
from brainbot.kv.limits import JSON, MAX_METADATA_BYTES, MAX_SAFE_INTEGER, MIN_EXPIRATION_TTL
from brainbot.kv.namespace import KVNamespace, PutItem, iter_keys
from brainbot.kv.overlay import ReadYourWrites
from brainbot.storage.dual import DualStore
from brainbot.storage.kv_store import KVStore
from brainbot.storage.protocol import Store

log = logging.getLogger("brainbot.storage.conversations")

_INVERT = 10**13  # ms timestamps below this (until the year 2286) invert to 13 digits
ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_CONTENT_BYTES = 1024 * 1024
"""The most any backend stores in one message; services set a lower limit of their own."""
_UNKNOWN_SIZE = MAX_CONTENT_BYTES  # a big message written before sizes were recorded


def _stored(
    role: str, content: str, timestamp: float, metadata: dict[str, JSON] | None, mid: str
) -> dict[str, Any]:
    """A message as its KV value holds it (``Message.to_json``; the migration's entries)."""
    out: dict[str, Any] = {"role": role, "content": content, "timestamp": timestamp}
    if metadata is not None:
        out["metadata"] = metadata
    out["id"] = mid
    return out


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    timestamp: float = field(default_factory=time.time)
    metadata: dict[str, JSON] | None = None
    id: str = ""
    """Set by the store on append; sorts newest first within a conversation."""

    def to_json(self) -> dict[str, Any]:
        return _stored(self.role, self.content, self.timestamp, self.metadata, self.id)

    def text(self) -> str:
        """The stored form (and, give or take, its size in a response)."""
        return orjson.dumps(self.to_json()).decode()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    """In chronological order."""
    next_before: str | None
    """Pass as ``before`` to read the messages older than these; None: there are none."""


def _check_id(kind: str, value: str) -> str:
    ok = isinstance(value, str) and value and "/" not in value
    try:
        ok = ok and len(value.encode("utf-8")) <= 128
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise ConversationError(f"{kind} ids are 1..128 bytes of UTF-8 text without '/'.")
    return value


def owner_digest(owner: str) -> str:
    """How an owner (any identity string) appears in key names."""
    try:
        raw = owner.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        raise ConversationError("An owner is a non-empty UTF-8 string.") from None
    if not raw:
        raise ConversationError("An owner is a non-empty UTF-8 string.")
    return hashlib.sha256(raw).hexdigest()[:32]


def owner_key(prefix: str, owner: str, cid: str) -> str:
    """The owner's index entry for conversation ``cid``: its existence is the ownership."""
    return f"{prefix}user/{owner_digest(owner)}/{cid}"


def owner_item(prefix: str, owner: str, cid: str, since: float) -> PutItem:
    """The KV write that records ``owner`` as the owner of ``cid`` (the migration writes
    legacy owners with exactly this encoding)."""
    return PutItem(owner_key(prefix, owner, cid), "", metadata={"since": since})


def _check_message(message: Message, max_bytes: int) -> Message:
    """The same rules on every backend: a known role, UTF-8 text up to the limit, metadata
    that is a JSON object (KV would refuse what Redis would silently change)."""
    if message.role not in ROLES:
        raise ConversationError(f"Unknown role {message.role!r}; use one of {sorted(ROLES)}.")
    if not isinstance(message.content, str):
        raise ConversationError("Message content must be text.")
    try:
        size = len(message.content.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConversationError("Message content must be valid UTF-8 text.") from None
    if size > max_bytes:
        raise ConversationError(f"Message content is {size} bytes; the limit is {max_bytes}.")
    if message.metadata is not None:
        try:  # what orjson (the stored form) takes and gives back unchanged
            ok = (
                isinstance(message.metadata, dict)
                and orjson.loads(orjson.dumps(message.metadata)) == message.metadata
            )
        except (TypeError, ValueError):  # orjson's errors: non-text keys, huge ints, surrogates
            ok = False
        if not ok:
            raise ConversationError("Message metadata must be a JSON object with text keys.")
    return message


class _Ids:
    """Message ids that sort newest first: inverted milliseconds, then a writer id.

    The milliseconds strictly increase within a process (a burst borrows the next ones),
    so a writer's own order is kept; the random writer id keeps ids of two processes
    appending in the same millisecond apart."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._writer = secrets.token_hex(4)
        self._last = 0

    def next(self) -> str:
        now = max(int(self._clock() * 1000), self._last + 1)
        self._last = now
        return message_id(now, self._writer)


def message_id(ms: int, writer: str) -> str:
    """The id of a message appended at ``ms`` (epoch milliseconds) by ``writer``."""
    inverted = str(_INVERT - ms)  # 13 digits from 2001 to 2286: no padding (2.5x faster)
    return f"{inverted}.{writer}" if len(inverted) == 13 else f"{_INVERT - ms:013d}.{writer}"


def exact_in_javascript(value: Any) -> bool:
    """Whether a Worker keeps this JSON as it is: Cloudflare stores metadata as JavaScript
    values, where a number is a double and an integer past 2**53 (a snowflake id in a
    legacy message's fields) comes back rounded. Metadata that would not stays in the
    value (the summary is then the "big" form, and reads fetch the value)."""
    if isinstance(value, bool) or not isinstance(value, int | dict | list):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INTEGER
    items = value.values() if isinstance(value, dict) else value
    return all(exact_in_javascript(v) for v in items)


def message_item(
    prefix: str, cid: str, message: Message, ttl: int | None, expiration: int | None = None
) -> PutItem:
    """The KV write that stores ``message`` (which has its id): the migration writes
    legacy messages with exactly this encoding (and an absolute ``expiration``)."""
    return _message_entry(
        prefix,
        cid,
        message.role,
        message.content,
        message.timestamp,
        message.metadata,
        message.id,
        ttl,
        expiration,
    )


def _message_entry(
    prefix: str,
    cid: str,
    role: str,
    content: str,
    timestamp: float,
    metadata: dict[str, JSON] | None,
    mid: str,
    ttl: int | None,
    expiration: int | None,
) -> PutItem:
    """``message_item`` from a message's fields: the migration builds its entries from
    legacy fields without making a ``Message`` of each (a frozen dataclass: 0.7 us)."""
    text = orjson.dumps(_stored(role, content, timestamp, metadata, mid)).decode()
    small: dict[str, Any] = {"r": role, "t": timestamp, "c": content}
    if metadata is not None:
        small["m"] = metadata
    # room for the migration's mark and digest (about 60 bytes), so a migrated message
    # is stored exactly as the bot would store it. ``small`` holds the same values as the
    # text under shorter names and without the id, so the lengths of the text (at most 4
    # bytes a character) and of the content settle most cases without encoding ``small``.
    room = MAX_METADATA_BYTES - 64
    fits = (
        len(content) <= room
        and (len(text) * 4 <= room or len(orjson.dumps(small)) <= room)
        and (metadata is None or exact_in_javascript(metadata))
    )
    summary: dict[str, Any] = (
        small if fits else {"r": role, "t": timestamp, "big": 1, "s": len(text.encode())}
    )
    return PutItem(f"{prefix}conv/{cid}/{mid}", text, expiration, ttl, summary)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a listing goes on: after the name ``after``, reading from the list page at
    ``cursor`` (the page that held the next, unreturned name). Handed to clients as an
    opaque token, so each further page costs one list request instead of a rescan."""

    after: str
    cursor: str | None = None

    def token(self) -> str:
        text = json.dumps([self.after, self.cursor], separators=(",", ":"))
        return _PAGE_MARK + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @staticmethod
    def parse(token: str) -> Position:
        try:
            body = token[len(_PAGE_MARK) :]
            after, cursor = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            if not isinstance(after, str) or not (cursor is None or isinstance(cursor, str)):
                raise ValueError("not a position")
            after.encode("utf-8")
        except (ValueError, TypeError, UnicodeError):  # binascii.Error is a ValueError
            raise ConversationError("Not a page token of this service.") from None
        return Position(after, cursor)


_PAGE_MARK = "p1."


def _listed_message(mid: str, meta: object) -> tuple[Message | None, int | None]:
    """A message from its list entry (None: its body must be read) and its size (None:
    unknown, a big message written before sizes were recorded)."""
    if not isinstance(meta, dict):
        return None, None
    if meta.get("big") or "c" not in meta:
        size = meta.get("s")
        return None, size if isinstance(size, int) and size >= 0 else None
    try:
        message = Message(str(meta["r"]), str(meta["c"]), float(meta["t"]), meta.get("m"), mid)
    except (KeyError, TypeError, ValueError):
        return None, None
    return message, len(message.text().encode("utf-8", "replace"))


def _stored_message(mid: str, raw: bytes | str) -> Message | None:
    try:
        body = json.loads(raw)
        return Message(
            str(body["role"]),
            str(body["content"]),
            float(body.get("timestamp", 0.0)),
            body.get("metadata"),
            mid,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _size(message: Message) -> int:
    return len(message.text().encode("utf-8", "replace"))


class _Layout(Protocol):
    async def create(self, cid: str, owner: str) -> None: ...
    async def owns(self, cid: str, owner: str) -> bool: ...
    async def append(self, cid: str, messages: Sequence[Message]) -> list[Message]: ...
    async def newest(
        self, cid: str, limit: int, start: Position | None, max_bytes: int | None
    ) -> tuple[list[Message], Position | None]: ...
    async def index(self, cid: str, *, sizes: bool = False) -> list[tuple[str, float, int]]: ...
    async def remove(self, cid: str, ids: Sequence[str]) -> None: ...
    async def delete(self, cid: str, owner: str | None) -> int: ...
    async def conversations(
        self, owner: str, limit: int, start: Position | None
    ) -> tuple[list[str], Position | None]: ...


_BODY_CHUNK = 16  # big message bodies read at a time: memory stays bounded


class KVLayout:
    """One KV key per message, newest first, small messages in metadata."""

    def __init__(
        self,
        namespace: KVNamespace,
        prefix: str,
        clock: Callable[[], float],
        ttl: int | None,
    ) -> None:
        self.namespace = namespace
        self.prefix = prefix
        self._clock = clock
        self._ids = _Ids(clock)
        self._ttl = ttl

    def _key(self, cid: str, mid: str = "") -> str:
        return f"{self.prefix}conv/{cid}/{mid}"

    async def create(self, cid: str, owner: str) -> None:
        item = owner_item(self.prefix, owner, cid, self._clock())
        await self.namespace.put(item.key, item.value, metadata=item.metadata)

    async def owns(self, cid: str, owner: str) -> bool:
        return await self.namespace.get(owner_key(self.prefix, owner, cid)) is not None

    async def append(self, cid: str, messages: Sequence[Message]) -> list[Message]:
        """The messages written in one bulk request: all of them, or none (whatever landed
        of a request that failed, in part or whole, is deleted again)."""
        stored = [
            Message(m.role, m.content, m.timestamp, m.metadata, self._ids.next()) for m in messages
        ]
        items = [message_item(self.prefix, cid, m, self._ttl) for m in stored]
        if len(items) == 1:
            item = items[0]
            await self.namespace.put(
                item.key, item.value, expiration_ttl=item.expiration_ttl, metadata=item.metadata
            )
            return stored
        try:
            result = await self.namespace.put_many(items)
        except BaseException:
            await self._discard(cid, items)
            raise
        if result.unsuccessful_keys:
            await self._discard(cid, items)
            raise Unavailable("KV did not take the whole turn; nothing of it is kept.")
        return stored

    async def _discard(self, cid: str, items: Sequence[PutItem]) -> None:
        """Best effort: delete every message of a turn that did not land whole."""
        try:
            result = await self.namespace.delete_many([item.key for item in items])
            failed = list(result.unsuccessful_keys)
        except Exception:  # the namespace is down: nothing more can be done now
            failed = [item.key for item in items]
        if failed:
            log.error("conversation %r: %d message(s) of a failed turn remain", cid, len(failed))

    async def _bodies(self, cid: str, mids: Sequence[str]) -> dict[str, Message | None]:
        entries = await self.namespace.get_many([self._key(cid, m) for m in mids])
        found = {}
        for mid in mids:
            entry = entries[self._key(cid, mid)]
            found[mid] = None if entry is None else _stored_message(mid, entry.value)
            if entry is not None and found[mid] is None:
                log.warning("conversation %r: skipped an entry that is not a message", cid)
        return found

    async def newest(
        self, cid: str, limit: int, start: Position | None, max_bytes: int | None
    ) -> tuple[list[Message], Position | None]:
        """Up to ``limit`` messages after ``start`` (older ones: ids sort newest first),
        newest first, within ``max_bytes`` (at least one); and where the next page starts.
        Big messages are read in small chunks, only as far as the budget goes."""
        prefix = self._key(cid)
        cursor, after = (start.cursor, start.after) if start is not None else (None, None)
        listed: list[tuple[str, Message | None, int | None, str | None]] = []
        known, stopped = 0, False
        page_size = min(max(limit, 10), 1000)
        while not stopped:
            page = await self.namespace.list(prefix=prefix, cursor=cursor, limit=page_size)
            for info in page.keys:
                mid = info.name[len(prefix) :]
                if after is not None and mid <= after:
                    continue
                message, size = _listed_message(mid, info.metadata)
                full = len(listed) >= limit
                if full or (max_bytes is not None and listed and known + (size or 0) > max_bytes):
                    stopped = True  # the next page starts here: on this page, after the last
                    break
                listed.append((mid, message, size, cursor))
                known += size or 0
            if not stopped:
                if page.cursor is None:
                    break
                cursor = page.cursor
                if len(listed) >= limit:  # this list page ended where the answer does: the
                    stopped = True  # next page starts at its cursor (no re-read, no look ahead)
        found: list[Message] = []
        used = 0
        bodies: dict[str, Message | None] = {}
        for i, (mid, message, size, page_cursor) in enumerate(listed):
            if message is None:
                if mid not in bodies:  # read this one and the next few big ones
                    ahead = [m for m, msg, _, _ in listed[i:] if msg is None][:_BODY_CHUNK]
                    bodies.update(await self._bodies(cid, ahead))
                message = bodies.pop(mid, None)
                if message is None:
                    continue
                size = _size(message)
            if max_bytes is not None and found and used + (size or 0) > max_bytes:
                return found, Position(found[-1].id, page_cursor)
            found.append(message)
            used += size or 0
        if stopped:
            return found, Position(listed[-1][0] if listed else (after or ""), cursor)
        return found, None

    async def index(self, cid: str, *, sizes: bool = False) -> list[tuple[str, float, int]]:
        """Every message id with its time and size, newest first, from names and metadata;
        with ``sizes``, big messages of unknown size are read (in chunks) to learn theirs."""
        prefix = self._key(cid)
        listed = []
        unknown = []
        async for info in iter_keys(self.namespace, prefix=prefix):
            mid = info.name[len(prefix) :]
            meta = info.metadata if isinstance(info.metadata, dict) else {}
            stamp = meta.get("t")
            _, size = _listed_message(mid, meta)
            if size is None:
                unknown.append(mid)
            listed.append((mid, float(stamp) if isinstance(stamp, int | float) else 0.0, size))
        learned: dict[str, int] = {}
        if sizes:
            for first in range(0, len(unknown), _BODY_CHUNK):
                for mid, message in (
                    await self._bodies(cid, unknown[first : first + _BODY_CHUNK])
                ).items():
                    learned[mid] = 0 if message is None else _size(message)
        return sorted(
            (mid, at, size if size is not None else learned.get(mid, 0)) for mid, at, size in listed
        )

    async def remove(self, cid: str, ids: Sequence[str]) -> None:
        if ids:
            await self.namespace.delete_many([self._key(cid, m) for m in ids])

    async def delete(self, cid: str, owner: str | None) -> int:
        ids = [mid for mid, _, _ in await self.index(cid)]
        keys = [self._key(cid, m) for m in ids]
        if owner is not None:
            keys.append(owner_key(self.prefix, owner, cid))
        if keys:
            await self.namespace.delete_many(keys)
        return len(ids)

    async def conversations(
        self, owner: str, limit: int, start: Position | None
    ) -> tuple[list[str], Position | None]:
        prefix = f"{self.prefix}user/{owner_digest(owner)}/"
        cursor, after = (start.cursor, start.after) if start is not None else (None, None)
        found: list[str] = []
        while True:
            page = await self.namespace.list(
                prefix=prefix, cursor=cursor, limit=min(max(limit + 1, 10), 1000)
            )
            for info in page.keys:
                cid = info.name[len(prefix) :]
                if after is not None and cid.encode() <= after.encode():
                    continue
                if len(found) >= limit:
                    return found, Position(found[-1], cursor)
                found.append(cid)
            if page.cursor is None:
                return found, None
            cursor = page.cursor


LEGACY_WRITER = "legacy00"
_LATEST_SECONDS = _INVERT / 1000
"""Seconds past this (the year 2286) are not seconds: a legacy time in milliseconds."""
_ID_FORMAT = re.compile(r"\A[0-9]{13}\.[0-9a-z]{8}\Z")  # ASCII: \d takes any script's digits


def legacy_messages(
    raws: Sequence[bytes | str], *, strict: bool
) -> list[tuple[bytes | str, Message]] | None:
    """Decode the list elements of a Redis conversation, old bot's or ours, with their raw
    form. An element without an id (the old bot's) gets one from its time and position,
    the same every time, so paging, trimming and the migration agree. Unknown fields go
    into metadata. Elements that are not messages: ``strict`` gives None, else skipped."""
    fields = _legacy_fields(raws, strict)
    if fields is None:
        return None
    return [(f[0], Message(f[1], f[2], f[3], f[4], f[5])) for f in fields]


def legacy_items(
    prefix: str, cid: str, raws: Sequence[bytes | str], expiration: int | None
) -> list[PutItem] | None:
    """The KV writes of a legacy conversation's elements (``message_item`` of each of
    ``legacy_messages(raws, strict=True)``, without the ``Message`` objects), or None if
    one element is not a message."""
    fields = _legacy_fields(raws, True)
    if fields is None:
        return None
    return [
        _message_entry(prefix, cid, role, content, timestamp, metadata, mid, None, expiration)
        for _, role, content, timestamp, metadata, mid in fields
    ]


_KNOWN_FIELDS = frozenset({"role", "content", "timestamp", "id", "metadata"})
_LegacyFields = tuple[bytes | str, str, str, float, dict[str, JSON] | None, str]
"""An element's raw form, role, content, timestamp (seconds), metadata and id."""


def _legacy_fields(raws: Sequence[bytes | str], strict: bool) -> list[_LegacyFields] | None:
    """``legacy_messages``' decoding, as plain tuples (the migration's hot loop)."""
    decoded: list[_LegacyFields] = []
    last_ms = 0
    for raw in raws:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        role = content = None
        if isinstance(body, dict):
            role, content = body.get("role"), body.get("content")
        # (a list or dict role is not hashable: ``in ROLES`` would raise TypeError)
        if not isinstance(role, str) or role not in ROLES or not isinstance(content, str):
            if strict:
                return None
            continue
        stamp = body.get("timestamp")
        usable = isinstance(stamp, (int, float)) and 0 < stamp < math.inf  # (a tuple: faster)
        timestamp = float(stamp) if usable else 0.0
        scale = 1
        while timestamp >= _LATEST_SECONDS:  # milliseconds (or finer): ids need seconds
            timestamp /= 1000
            scale *= 1000
        given = body.get("id")
        if isinstance(given, str) and _ID_FORMAT.match(given):
            mid = given
            last_ms = max(last_ms, _INVERT - int(given[:13]))
        else:
            ms = int(timestamp * 1000) if scale == 1 else int(stamp) * 1000 // scale
            last_ms = max(ms, last_ms + 1)  # keeps the list's order
            mid = message_id(last_ms, LEGACY_WRITER)
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            metadata = {"metadata": metadata}
        if not body.keys() <= _KNOWN_FIELDS:  # (one set test: most have no other field)
            extra = {k: v for k, v in body.items() if k not in _KNOWN_FIELDS}
            metadata = {**(metadata or {}), **extra}
        decoded.append((raw, role, content, timestamp, metadata, mid))
    return decoded


class RedisLayout:
    """The legacy layout: a Redis list of JSON messages per conversation and a set of
    conversations per owner. Messages are ordered by id everywhere (as on KV), not by
    list position, so every backend pages and trims the same way."""

    _SLACK = 100  # extra tail elements read so that id order can differ from list order

    def __init__(self, redis: Any, clock: Callable[[], float]) -> None:
        self.redis = redis
        self._clock = clock
        self._ids = _Ids(clock)

    async def create(self, cid: str, owner: str) -> None:
        await self.redis.sadd(f"user:{owner}:conversations", cid)

    async def owns(self, cid: str, owner: str) -> bool:
        return bool(await self.redis.sismember(f"user:{owner}:conversations", cid))

    async def append(
        self, cid: str, messages: Sequence[Message], *, keep_ids: bool = False
    ) -> list[Message]:
        stored = [
            Message(
                m.role,
                m.content,
                m.timestamp,
                m.metadata,
                m.id if keep_ids and m.id else self._ids.next(),
            )
            for m in messages
        ]
        await self.redis.rpush(  # one RPUSH: the whole turn or nothing
            f"conversation:{cid}", *[json.dumps(m.to_json(), ensure_ascii=False) for m in stored]
        )
        return stored

    async def _all(self, cid: str) -> list[tuple[bytes | str, Message]]:
        raw = await self.redis.lrange(f"conversation:{cid}", 0, -1)
        return legacy_messages(raw, strict=False) or []

    async def newest(
        self, cid: str, limit: int, start: Position | None, max_bytes: int | None
    ) -> tuple[list[Message], Position | None]:
        """Newest first, like the KV layout (older pages read the whole list: the rollback
        backend favours simplicity over cost)."""
        if start is None:
            raw = await self.redis.lrange(f"conversation:{cid}", -(limit + self._SLACK), -1)
            ordered = sorted(
                (m for _, m in legacy_messages(raw, strict=False) or []), key=lambda m: m.id
            )
            more = len(raw) >= limit + self._SLACK or len(ordered) > limit
        else:
            ordered = sorted(
                (m for _, m in await self._all(cid) if m.id > start.after), key=lambda m: m.id
            )
            more = len(ordered) > limit
        chosen: list[Message] = []
        used = 0
        for message in ordered[:limit]:
            size = _size(message)
            if max_bytes is not None and chosen and used + size > max_bytes:
                return chosen, Position(chosen[-1].id)
            chosen.append(message)
            used += size
        return chosen, Position(chosen[-1].id) if more and chosen else None

    async def index(self, cid: str, *, sizes: bool = False) -> list[tuple[str, float, int]]:
        return sorted((m.id, m.timestamp, _size(m)) for _, m in await self._all(cid))

    async def remove(self, cid: str, ids: Sequence[str]) -> None:
        gone = set(ids)
        for raw, message in await self._all(cid):
            if message.id in gone:
                await self.redis.lrem(f"conversation:{cid}", 1, raw)

    async def delete(self, cid: str, owner: str | None) -> int:
        count = int(await self.redis.llen(f"conversation:{cid}"))
        await self.redis.delete(f"conversation:{cid}")
        if owner is not None:
            await self.redis.srem(f"user:{owner}:conversations", cid)
        return count

    async def conversations(
        self, owner: str, limit: int, start: Position | None
    ) -> tuple[list[str], Position | None]:
        members = await self.redis.smembers(f"user:{owner}:conversations")
        ids = sorted((m.decode() if isinstance(m, bytes) else m for m in members), key=str.encode)
        if start is not None:
            ids = [c for c in ids if c.encode() > start.after.encode()]
        return ids[:limit], Position(ids[limit - 1]) if len(ids) > limit else None


CONVERSATION_MEMORY = 60.0
"""Seconds a process always reads its own appends back on an eventually consistent
namespace, whatever the store's own memory is set to: a turn needs the previous one."""


def _own_writes(namespace: KVNamespace) -> KVNamespace:
    """``namespace`` with at least ``CONVERSATION_MEMORY`` seconds of read-your-writes when
    it is eventually consistent (the store's wrapper when it remembers that long)."""
    if isinstance(namespace, ReadYourWrites):
        if namespace.window >= CONVERSATION_MEMORY:
            return namespace
        namespace = namespace.inner
    if not namespace.consistency.eventual:
        return namespace
    return ReadYourWrites(namespace, CONVERSATION_MEMORY)


class ConversationStore:
    """Conversation history on whatever ``open_store()`` returned (kv, dual or redis)."""

    COUNTED = 4096
    """Conversations whose appends a process counts for ``trim_every`` (see ``_appended``)."""

    def __init__(
        self,
        store: Store,
        *,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        max_age: float | None = None,
        max_content_bytes: int = MAX_CONTENT_BYTES,
        trim_every: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_messages is not None and max_messages < 1:
            raise ConversationError("max_messages must be at least 1.")
        if max_bytes is not None and max_bytes < 1:
            raise ConversationError("max_bytes must be at least 1.")
        if max_age is not None and max_age < MIN_EXPIRATION_TTL:
            raise ConversationError(
                f"max_age must be at least {MIN_EXPIRATION_TTL} s (KV's floor)."
            )
        if not 1 <= max_content_bytes <= MAX_CONTENT_BYTES:
            raise ConversationError(f"max_content_bytes must be 1..{MAX_CONTENT_BYTES}.")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.max_content_bytes = max_content_bytes
        self._clock = clock
        self._trim_every = trim_every
        self._appends: OrderedDict[str, int] = OrderedDict()
        self._forgot = False
        ttl = None if max_age is None else int(max_age) + 1
        kv = store.kv if isinstance(store, DualStore) else store
        self._primary: _Layout
        self._shadow: RedisLayout | None = None
        if isinstance(kv, KVStore):
            self._primary = KVLayout(_own_writes(kv.namespace), kv.prefix, clock, ttl)
            if isinstance(store, DualStore):
                self._shadow = RedisLayout(store.redis, clock)
        else:
            self._primary = RedisLayout(store, clock)

    @property
    def limited(self) -> bool:
        return self.max_messages is not None or self.max_bytes is not None or bool(self.max_age)

    def _fresh(self, messages: list[Message]) -> list[Message]:
        if self.max_age is None:
            return messages
        oldest = self._clock() - self.max_age
        return [m for m in messages if m.timestamp >= oldest]

    # -- ownership -----------------------------------------------------------------------

    async def create(self, owner: str) -> str:
        """A new conversation owned by ``owner``; its id comes from here (128 random bits),
        never from a client. One KV write."""
        owner_digest(owner)
        cid = secrets.token_urlsafe(16)
        await self._primary.create(cid, owner)
        if self._shadow is not None:
            await self._shadow.create(cid, owner)
        return cid

    async def owns(self, conversation_id: str, owner: str) -> bool:
        """Whether ``owner`` owns the conversation. One KV read."""
        owner_digest(owner)
        return await self._primary.owns(_check_id("conversation", conversation_id), owner)

    async def conversations(self, owner: str) -> list[str]:
        """The ids of every conversation ``owner`` owns (in UTF-8 order)."""
        found, after = [], None
        while True:
            page, after = await self.conversation_page(owner, limit=1000, after=after)
            found += page
            if after is None:
                return found

    async def conversation_page(
        self, owner: str, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` of ``owner``'s conversation ids after the token ``after``, and
        the token of the next page (None: no more). One list request per page."""
        owner_digest(owner)
        limit = self._check_limit(limit)
        start = Position.parse(after) if after is not None else None
        ids, next_position = await self._primary.conversations(owner, limit, start)
        return ids, next_position.token() if next_position is not None else None

    # -- messages ------------------------------------------------------------------------

    async def append(self, conversation_id: str, message: Message) -> Message:
        """Store one message; returns it with its id. One KV write."""
        return (await self.append_turn(conversation_id, [message]))[0]

    async def append_turn(self, conversation_id: str, messages: Sequence[Message]) -> list[Message]:
        """Store messages together (a user's message and the reply): every one is checked
        before anything is written, and they are written in one request, so a turn is
        stored whole or not at all."""
        cid = _check_id("conversation", conversation_id)
        if not messages:
            raise ConversationError("A turn has at least one message.")
        checked = [_check_message(m, self.max_content_bytes) for m in messages]
        stored = await self._primary.append(cid, checked)
        if self._shadow is not None:  # the rollback copy keeps the KV ids
            await self._shadow.append(cid, stored, keep_ids=True)
        if self.limited:
            before = self._appended(cid)
            self._appends[cid] = before + len(stored)
            if before // self._trim_every != self._appends[cid] // self._trim_every:
                try:  # amortised: one listing per trim_every appends; the turn is stored
                    await self.trim(cid)
                except Unavailable as exc:
                    log.warning("conversation %r: trim postponed (%s)", cid, type(exc).__name__)
        return stored

    def _appended(self, cid: str) -> int:
        """The append count of ``cid`` (the most recently used one), for ``trim_every``.
        At most ``COUNTED`` conversations are counted, the least recently appended to
        forgotten first: one count per conversation ever written grew a serving process's
        memory without end. Once counts have been forgotten, a new one starts at a random
        offset, so trims still come every ``trim_every`` appends on average however
        often a conversation's count is forgotten."""
        count = self._appends.pop(cid, None)
        if count is None:
            count = secrets.randbelow(self._trim_every) if self._forgot else 0
            while len(self._appends) >= self.COUNTED:
                self._appends.popitem(last=False)
                self._forgot = True
        return count

    def _check_limit(self, limit: object) -> int:
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise ConversationError("limit must be an integer from 1 to 1000.")
        return limit

    async def page(
        self,
        conversation_id: str,
        *,
        limit: int = 50,
        before: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        """The newest ``limit`` messages (older than ``before``: a message id, or the token
        of a previous page), in chronological order, as many as fit ``max_bytes`` (always
        at least one); and the token of the next, older page. On KV: one list request
        (plus one bulk read when some messages are too big for metadata); a further page
        by token is one more, while a message id lists from the newest down to it.

        Retention (``max_messages``, ``max_bytes``) bounds the first page exactly; older
        pages show what is stored, which a trim brings back within retention every
        ``trim_every`` appends."""
        cid = _check_id("conversation", conversation_id)
        limit = self._check_limit(limit)
        start: Position | None = None
        if before is not None:
            if not isinstance(before, str):
                raise ConversationError("'before' must be a message id or a page token.")
            if before.startswith(_PAGE_MARK):
                start = Position.parse(before)
            elif _ID_FORMAT.match(before):
                start = Position(before)
            else:
                raise ConversationError("'before' must be a message id or a page token.")
        retained = start is None and (self.max_messages or self.max_bytes)
        if retained:  # retention counts from the newest: cap the first page by it
            limit = min(limit, self.max_messages or limit)
            max_bytes = min(b for b in (max_bytes, self.max_bytes, 2**62) if b is not None)
        newest, next_position = await self._primary.newest(cid, limit, start, max_bytes)
        messages = self._fresh(newest)
        if len(messages) < len(newest) or (
            retained and len(messages) >= (self.max_messages or 2**62)
        ):
            next_position = None  # past the age limit, or at the retention cap: no more
        token = next_position.token() if next_position is not None else None
        return HistoryPage(list(reversed(messages)), token)

    async def history(
        self, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message]:
        """The newest ``limit`` messages (older than ``before``), in chronological order."""
        return (await self.page(conversation_id, limit=limit, before=before)).messages

    async def _kept(self, cid: str) -> tuple[list[str], list[str]]:
        """Ids within the retention limits (count, bytes, age), newest first, and the rest:
        both from one listing, so a message appended meanwhile is in neither."""
        every = await self._primary.index(cid, sizes=self.max_bytes is not None)
        index = every
        if self.max_age is not None:
            oldest = self._clock() - self.max_age
            index = [entry for entry in index if entry[1] >= oldest]
        kept: list[str] = []
        used = 0
        for mid, _, size in index:
            if self.max_messages is not None and len(kept) >= self.max_messages:
                break
            if self.max_bytes is not None and used + size > self.max_bytes and kept:
                break
            kept.append(mid)
            used += size
        chosen = set(kept)
        return kept, [mid for mid, _, _ in every if mid not in chosen]

    async def count(self, conversation_id: str) -> int:
        """How many messages the conversation holds (KV: one list request per 1,000)."""
        kept, _ = await self._kept(_check_id("conversation", conversation_id))
        return len(kept)

    async def trim(self, conversation_id: str) -> int:
        """Delete the messages beyond the retention limits. What to delete comes from the
        same listing as what to keep: a second listing would also hold messages other
        processes appended after the first, the newest of all, and delete them."""
        cid = _check_id("conversation", conversation_id)
        _, extra = await self._kept(cid)
        await self._primary.remove(cid, extra)
        if self._shadow is not None:
            await self._shadow.remove(cid, extra)
        return len(extra)

    async def delete(self, conversation_id: str, owner: str | None = None) -> int:
        """Delete every message (and ``owner``'s index entry); returns how many messages."""
        cid = _check_id("conversation", conversation_id)
        removed = await self._primary.delete(cid, owner)
        if self._shadow is not None:
            await self._shadow.delete(cid, owner)
        return removed
