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

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from brainbot.errors import ConversationError, Unavailable
from brainbot.kv.limits import JSON, MAX_METADATA_BYTES, MIN_EXPIRATION_TTL
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


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    timestamp: float = field(default_factory=time.time)
    metadata: dict[str, JSON] | None = None
    id: str = ""
    """Set by the store on append; sorts newest first within a conversation."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def text(self) -> str:
        """The stored form (and, give or take, its size in a response)."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)


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
        try:
            ok = (
                isinstance(message.metadata, dict)
                and json.loads(json.dumps(message.metadata, allow_nan=False)) == message.metadata
            )
            json.dumps(message.metadata, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError):  # UnicodeEncodeError included
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
    return f"{_INVERT - ms:013d}.{writer}"


def message_item(prefix: str, cid: str, message: Message, ttl: int | None) -> PutItem:
    """The KV write that stores ``message`` (which has its id): the migration writes
    legacy messages with exactly this encoding."""
    text = message.text()
    small: dict[str, Any] = {"r": message.role, "t": message.timestamp, "c": message.content}
    if message.metadata is not None:
        small["m"] = message.metadata
    fits = len(json.dumps(small, separators=(",", ":"), ensure_ascii=False).encode())
    metadata: dict[str, Any] = (
        small
        if fits <= MAX_METADATA_BYTES
        else {"r": message.role, "t": message.timestamp, "big": 1, "s": len(text.encode())}
    )
    return PutItem(f"{prefix}conv/{cid}/{message.id}", text, None, ttl, metadata)


def _listed_message(mid: str, meta: object) -> tuple[Message | None, int]:
    """A message from its list entry (None: its body must be read) and its size."""
    if not isinstance(meta, dict):
        return None, _UNKNOWN_SIZE
    if meta.get("big") or "c" not in meta:
        size = meta.get("s")
        return None, size if isinstance(size, int) and size >= 0 else _UNKNOWN_SIZE
    try:
        message = Message(str(meta["r"]), str(meta["c"]), float(meta["t"]), meta.get("m"), mid)
    except (KeyError, TypeError, ValueError):
        return None, _UNKNOWN_SIZE
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


class _Layout(Protocol):
    async def create(self, cid: str, owner: str) -> None: ...
    async def owns(self, cid: str, owner: str) -> bool: ...
    async def append(self, cid: str, messages: Sequence[Message]) -> list[Message]: ...
    async def newest(
        self, cid: str, limit: int, before: str | None, max_bytes: int | None
    ) -> tuple[list[Message], bool]: ...
    async def index(self, cid: str) -> list[tuple[str, float, int]]: ...
    async def remove(self, cid: str, ids: Sequence[str]) -> None: ...
    async def delete(self, cid: str, owner: str | None) -> int: ...
    async def conversations(self, owner: str) -> list[str]: ...


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
        """The messages written in one bulk request: all of them, or none (what landed of
        a request the service refused in part is deleted again)."""
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
        result = await self.namespace.put_many(items)
        if result.unsuccessful_keys:
            landed = [i.key for i in items if i.key not in set(result.unsuccessful_keys)]
            if landed:
                await self.namespace.delete_many(landed)
            raise Unavailable("KV did not take the whole turn; nothing of it is kept.")
        return stored

    async def newest(
        self, cid: str, limit: int, before: str | None, max_bytes: int | None
    ) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages older than ``before``, newest first, within
        ``max_bytes``; and whether older ones remain."""
        prefix = self._key(cid)
        chosen: list[tuple[str, Message | None]] = []
        used, more = 0, False
        async for info in iter_keys(
            self.namespace, prefix=prefix, page_size=min(max(limit + 1, 10), 1000)
        ):
            mid = info.name[len(prefix) :]
            if before is not None and mid <= before:
                continue  # newer than (or equal to) the anchor
            message, size = _listed_message(mid, info.metadata)
            if len(chosen) >= limit or (
                max_bytes is not None and chosen and used + size > max_bytes
            ):
                more = True
                break
            chosen.append((mid, message))
            used += size
        big = [mid for mid, message in chosen if message is None]
        bodies = {}
        if big:
            entries = await self.namespace.get_many([self._key(cid, m) for m in big])
            for mid in big:
                entry = entries[self._key(cid, mid)]
                bodies[mid] = None if entry is None else _stored_message(mid, entry.value)
        found = []
        for mid, message in chosen:
            message = message if message is not None else bodies.get(mid)
            if message is None:
                if mid in bodies:
                    log.warning("conversation %r: skipped an entry that is not a message", cid)
                continue
            found.append(message)
        return found, more

    async def index(self, cid: str) -> list[tuple[str, float, int]]:
        """Every message id with its time and size, newest first, from names and metadata."""
        prefix = self._key(cid)
        listed = []
        async for info in iter_keys(self.namespace, prefix=prefix):
            mid = info.name[len(prefix) :]
            meta = info.metadata if isinstance(info.metadata, dict) else {}
            stamp = meta.get("t")
            _, size = _listed_message(mid, meta)
            listed.append((mid, float(stamp) if isinstance(stamp, int | float) else 0.0, size))
        return sorted(listed)

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

    async def conversations(self, owner: str) -> list[str]:
        prefix = f"{self.prefix}user/{owner_digest(owner)}/"
        listed = {
            info.name[len(prefix) :] async for info in iter_keys(self.namespace, prefix=prefix)
        }
        return sorted(listed, key=lambda c: c.encode())


LEGACY_WRITER = "legacy00"
_ID_FORMAT = re.compile(r"\A\d{13}\.[0-9a-z]{8}\Z")


def legacy_messages(
    raws: Sequence[bytes | str], *, strict: bool
) -> list[tuple[bytes | str, Message]] | None:
    """Decode the list elements of a Redis conversation, old bot's or ours, with their raw
    form. An element without an id (the old bot's) gets one from its time and position,
    the same every time, so paging, trimming and the migration agree. Unknown fields go
    into metadata. Elements that are not messages: ``strict`` gives None, else skipped."""
    decoded: list[tuple[bytes | str, Message]] = []
    last_ms = 0
    for raw in raws:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        ok = (
            isinstance(body, dict)
            and body.get("role") in ROLES
            and isinstance(body.get("content"), str)
        )
        if not ok:
            if strict:
                return None
            continue
        stamp = body.get("timestamp")
        timestamp = float(stamp) if isinstance(stamp, int | float) and stamp > 0 else 0.0
        given = body.get("id")
        if isinstance(given, str) and _ID_FORMAT.match(given):
            mid = given
            last_ms = max(last_ms, _INVERT - int(given[:13]))
        else:
            last_ms = max(int(timestamp * 1000), last_ms + 1)  # keeps the list's order
            mid = message_id(last_ms, LEGACY_WRITER)
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("role", "content", "timestamp", "id", "metadata")
        }
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            metadata = {"metadata": metadata}
        if extra:
            metadata = {**(metadata or {}), **extra}
        decoded.append((raw, Message(body["role"], body["content"], timestamp, metadata, mid)))
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
        self, cid: str, limit: int, before: str | None, max_bytes: int | None
    ) -> tuple[list[Message], bool]:
        """Newest first, like the KV layout."""
        if before is None:
            raw = await self.redis.lrange(f"conversation:{cid}", -(limit + self._SLACK), -1)
            ordered = sorted(
                (m for _, m in legacy_messages(raw, strict=False) or []), key=lambda m: m.id
            )
            more = len(raw) >= limit + self._SLACK or len(ordered) > limit
        else:
            ordered = sorted(
                (m for _, m in await self._all(cid) if m.id > before), key=lambda m: m.id
            )
            more = len(ordered) > limit
        chosen: list[Message] = []
        used = 0
        for message in ordered[:limit]:
            size = len(message.text().encode("utf-8", "replace"))
            if max_bytes is not None and chosen and used + size > max_bytes:
                return chosen, True
            chosen.append(message)
            used += size
        return chosen, more

    async def index(self, cid: str) -> list[tuple[str, float, int]]:
        return sorted(
            (m.id, m.timestamp, len(m.text().encode("utf-8", "replace")))
            for _, m in await self._all(cid)
        )

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

    async def conversations(self, owner: str) -> list[str]:
        members = await self.redis.smembers(f"user:{owner}:conversations")
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)


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
        self._appends: dict[str, int] = {}
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
        """The ids of the conversations ``owner`` owns."""
        owner_digest(owner)
        return await self._primary.conversations(owner)

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
            before = self._appends.get(cid, 0)
            self._appends[cid] = before + len(stored)
            if before // self._trim_every != self._appends[cid] // self._trim_every:
                await self.trim(cid)  # amortised: one listing per trim_every appends
        return stored

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
        """The newest ``limit`` messages (older than message id ``before``, if given), in
        chronological order, as many as fit ``max_bytes`` (always at least one); and where
        the older ones start. On KV: one list request, plus one bulk read when some of the
        messages are too big to ride in metadata."""
        cid = _check_id("conversation", conversation_id)
        limit = self._check_limit(limit)
        if before is not None and (not isinstance(before, str) or not _ID_FORMAT.match(before)):
            raise ConversationError("'before' must be a message id.")
        capped = self.max_messages is not None or self.max_bytes is not None
        if capped and before is None:  # retention counts from the newest: cap the read
            limit = min(limit, self.max_messages or limit)
            max_bytes = min(b for b in (max_bytes, self.max_bytes, 2**62) if b is not None)
        newest, more = await self._primary.newest(cid, limit, before, max_bytes)
        if capped and before is not None:  # older pages: only what retention keeps
            allowed = set(await self._kept(cid))
            kept = [m for m in newest if m.id in allowed]
            more = more and len(kept) == len(newest)
            newest = kept
        messages = self._fresh(newest)
        more = more and len(messages) == len(newest)
        # the next page may come back empty when retention ends where this one did
        next_before = messages[-1].id if more and messages else None
        return HistoryPage(list(reversed(messages)), next_before)

    async def history(
        self, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message]:
        """The newest ``limit`` messages (older than ``before``), in chronological order."""
        return (await self.page(conversation_id, limit=limit, before=before)).messages

    async def _kept(self, cid: str) -> list[str]:
        """Ids within the retention limits (count, bytes, age), newest first."""
        index = await self._primary.index(cid)
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
        return kept

    async def count(self, conversation_id: str) -> int:
        """How many messages the conversation holds (KV: one list request per 1,000)."""
        return len(await self._kept(_check_id("conversation", conversation_id)))

    async def trim(self, conversation_id: str) -> int:
        """Delete the messages beyond the retention limits."""
        cid = _check_id("conversation", conversation_id)
        kept = set(await self._kept(cid))
        extra = [mid for mid, _, _ in await self._primary.index(cid) if mid not in kept]
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
