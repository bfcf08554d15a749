"""Conversation history, laid out for KV's rules (and for Redis, for the rollback).

On KV, one growing value per conversation would lose messages (last writer wins, no
compare-and-swap) and hit the 1 write/s per key limit. Instead every message is its own
key, so concurrent appends never touch the same key::

    {prefix}conv/{conversation}/{13-digit inverted ms}.{writer}         one message
    {prefix}user/{user}/{conversation}                                 a user's conversations

* The id sorts **newest first** (inverted time): KV lists in ascending byte order only, so
  the newest N messages are the first N names of one ``list`` call.
* Small messages (role, time, content, metadata) ride in the key's **metadata**, which
  ``list`` returns: the newest 50 messages cost 1 request, or 2 when some are too big for
  metadata (one ``bulk/get`` for those). An append is 1 write.
* Within a process ids strictly increase (a writer's own order is kept even within a
  millisecond); across processes, messages order by time, ties by writer id.
* The cap (messages or age) and the TTL are enforced on every read, so every backend
  answers the same; on KV each message also carries its own expiry.
* Read-your-writes: on an eventually consistent namespace the store's namespace is wrapped
  in :class:`~brainbot.kv.overlay.ReadYourWrites` (shared with ``KVStore``), which merges
  this process's appends and deletes into listings that have not caught up yet.

On Redis (``BRAINBOT_STORAGE_BACKEND=redis``) a conversation is the legacy layout, a list
``conversation:{id}`` of JSON messages (RPUSH is atomic there), so a rollback reads what the
bot wrote; ``dual`` writes both layouts and reads KV.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from brainbot.errors import ConversationError
from brainbot.kv.limits import JSON, MAX_METADATA_BYTES, MIN_EXPIRATION_TTL
from brainbot.kv.namespace import KVNamespace, PutItem, iter_keys
from brainbot.storage.dual import DualStore
from brainbot.storage.kv_store import KVStore
from brainbot.storage.protocol import Store

_INVERT = 10**13  # ms timestamps below this (until the year 2286) invert to 13 digits
ROLES = frozenset({"system", "user", "assistant", "tool"})


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


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or len(value.encode()) > 128:
        raise ConversationError(f"{kind} ids are 1..128 bytes of text without '/': {value!r}")
    return value


MAX_CONTENT_BYTES = 1024 * 1024


def _check_message(message: Message) -> Message:
    """The same rules on every backend: a known role, UTF-8 text up to 1 MiB, metadata that
    is a JSON object (KV would refuse what Redis would silently change)."""
    if message.role not in ROLES:
        raise ConversationError(f"Unknown role {message.role!r}; use one of {sorted(ROLES)}.")
    if not isinstance(message.content, str):
        raise ConversationError("Message content must be text.")
    try:
        size = len(message.content.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConversationError("Message content must be valid UTF-8 text.") from None
    if size > MAX_CONTENT_BYTES:
        raise ConversationError(
            f"Message content is {size} bytes; the limit is {MAX_CONTENT_BYTES}."
        )
    if message.metadata is not None:
        try:
            ok = (
                isinstance(message.metadata, dict)
                and json.loads(json.dumps(message.metadata, allow_nan=False)) == message.metadata
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConversationError("Message metadata must be a JSON object with text keys.")
    return message


class _Layout(Protocol):
    async def append(self, cid: str, message: Message, user_id: str | None) -> Message: ...
    async def newest(self, cid: str, limit: int, before: str | None) -> list[Message]: ...
    async def index(self, cid: str) -> list[tuple[str, float]]: ...
    async def delete(self, cid: str) -> int: ...
    async def conversations(self, user_id: str) -> list[str]: ...
    async def remove(self, cid: str, ids: Sequence[str]) -> None: ...


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
    text = json.dumps(message.to_json(), separators=(",", ":"), ensure_ascii=False)
    small: dict[str, Any] = {"r": message.role, "t": message.timestamp, "c": message.content}
    if message.metadata is not None:
        small["m"] = message.metadata
    fits = len(json.dumps(small, separators=(",", ":"), ensure_ascii=False).encode())
    metadata: dict[str, Any] = (
        small
        if fits <= MAX_METADATA_BYTES
        else {"r": message.role, "t": message.timestamp, "big": 1}
    )
    return PutItem(f"{prefix}conv/{cid}/{message.id}", text, None, ttl, metadata)


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
        self._indexed: set[tuple[str, str]] = set()  # index entries written: no second write

    def _key(self, cid: str, mid: str = "") -> str:
        return f"{self.prefix}conv/{cid}/{mid}"

    async def append(self, cid: str, message: Message, user_id: str | None) -> Message:
        stored = Message(
            message.role, message.content, message.timestamp, message.metadata, self._ids.next()
        )
        item = message_item(self.prefix, cid, stored, self._ttl)
        await self.namespace.put(
            item.key, item.value, expiration_ttl=item.expiration_ttl, metadata=item.metadata
        )
        if user_id is not None and (user_id, cid) not in self._indexed:
            await self.namespace.put(
                f"{self.prefix}user/{user_id}/{cid}", "", metadata={"since": stored.timestamp}
            )
            self._indexed.add((user_id, cid))
        return stored

    async def newest(self, cid: str, limit: int, before: str | None) -> list[Message]:
        prefix = self._key(cid)
        found: dict[str, Message | None] = {}
        big: list[str] = []
        async for info in iter_keys(
            self.namespace, prefix=prefix, page_size=min(max(limit, 10), 1000)
        ):
            mid = info.name[len(prefix) :]
            if before is not None and mid <= before:
                continue  # newer than (or equal to) the anchor
            meta = info.metadata if isinstance(info.metadata, dict) else {}
            if meta.get("big") or "c" not in meta:
                big.append(mid)
                found[mid] = None
            else:
                found[mid] = Message(meta["r"], meta["c"], meta["t"], meta.get("m"), mid)
            if len(found) >= limit:
                break
        if big:
            entries = await self.namespace.get_many([self._key(cid, m) for m in big])
            for mid in big:
                entry = entries[self._key(cid, mid)]
                found[mid] = None if entry is None else Message(**json.loads(entry.value))
        ordered = sorted((m for m in found.values() if m is not None), key=lambda m: m.id)
        return ordered[:limit]

    async def index(self, cid: str) -> list[tuple[str, float]]:
        """Every message id with its timestamp, newest first, from names and metadata only."""
        prefix = self._key(cid)
        listed: list[tuple[str, float]] = []
        async for info in iter_keys(self.namespace, prefix=prefix):
            meta = info.metadata if isinstance(info.metadata, dict) else {}
            listed.append((info.name[len(prefix) :], float(meta.get("t", 0.0))))
        return sorted(listed)

    async def remove(self, cid: str, ids: Sequence[str]) -> None:
        if ids:
            await self.namespace.delete_many([self._key(cid, m) for m in ids])

    async def delete(self, cid: str) -> int:
        ids = [mid for mid, _ in await self.index(cid)]
        await self.remove(cid, ids)
        return len(ids)

    async def conversations(self, user_id: str) -> list[str]:
        prefix = f"{self.prefix}user/{user_id}/"
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
    """The legacy layout: a Redis list of JSON messages per conversation. Messages are
    ordered by id everywhere (as on KV), not by list position, so every backend pages and
    trims the same way."""

    _SLACK = 100  # extra tail elements read so that id order can differ from list order

    def __init__(self, redis: Any, clock: Callable[[], float]) -> None:
        self.redis = redis
        self._ids = _Ids(clock)

    async def append(
        self, cid: str, message: Message, user_id: str | None, *, keep_id: bool = False
    ) -> Message:
        stored = Message(
            message.role,
            message.content,
            message.timestamp,
            message.metadata,
            message.id if keep_id and message.id else self._ids.next(),
        )
        await self.redis.rpush(
            f"conversation:{cid}", json.dumps(stored.to_json(), ensure_ascii=False)
        )
        if user_id is not None:
            await self.redis.sadd(f"user:{user_id}:conversations", cid)
        return stored

    async def _all(self, cid: str) -> list[tuple[bytes | str, Message]]:
        raw = await self.redis.lrange(f"conversation:{cid}", 0, -1)
        return legacy_messages(raw, strict=False) or []

    async def newest(self, cid: str, limit: int, before: str | None) -> list[Message]:
        """Newest first, like the KV layout."""
        if before is None:
            raw = await self.redis.lrange(f"conversation:{cid}", -(limit + self._SLACK), -1)
            tail = [m for _, m in legacy_messages(raw, strict=False) or []]
            return sorted(tail, key=lambda m: m.id)[:limit]
        older = sorted((m for _, m in await self._all(cid) if m.id > before), key=lambda m: m.id)
        return older[:limit]

    async def index(self, cid: str) -> list[tuple[str, float]]:
        return sorted((m.id, m.timestamp) for _, m in await self._all(cid))

    async def remove(self, cid: str, ids: Sequence[str]) -> None:
        gone = set(ids)
        for raw, message in await self._all(cid):
            if message.id in gone:
                await self.redis.lrem(f"conversation:{cid}", 1, raw)

    async def delete(self, cid: str) -> int:
        count = int(await self.redis.llen(f"conversation:{cid}"))
        await self.redis.delete(f"conversation:{cid}")
        return count

    async def conversations(self, user_id: str) -> list[str]:
        members = await self.redis.smembers(f"user:{user_id}:conversations")
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)


class ConversationStore:
    """Conversation history on whatever ``open_store()`` returned (kv, dual or redis)."""

    def __init__(
        self,
        store: Store,
        *,
        max_messages: int | None = None,
        max_age: float | None = None,
        trim_every: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_messages is not None and max_messages < 1:
            raise ConversationError("max_messages must be at least 1.")
        if max_age is not None and max_age < MIN_EXPIRATION_TTL:
            raise ConversationError(
                f"max_age must be at least {MIN_EXPIRATION_TTL} s (KV's floor)."
            )
        self.max_messages = max_messages
        self.max_age = max_age
        self._clock = clock
        self._trim_every = trim_every
        self._appends: dict[str, int] = {}
        ttl = None if max_age is None else int(max_age) + 1
        kv = store.kv if isinstance(store, DualStore) else store
        self._primary: _Layout
        self._shadow: _Layout | None = None
        if isinstance(kv, KVStore):
            self._primary = KVLayout(kv.namespace, kv.prefix, clock, ttl)
            if isinstance(store, DualStore):
                self._shadow = RedisLayout(store.redis, clock)
        else:
            self._primary = RedisLayout(store, clock)

    def _fresh(self, messages: list[Message]) -> list[Message]:
        if self.max_age is None:
            return messages
        oldest = self._clock() - self.max_age
        return [m for m in messages if m.timestamp >= oldest]

    async def append(
        self, conversation_id: str, message: Message, *, user_id: str | None = None
    ) -> Message:
        """Store one message; returns it with its id. One KV write (two the first time a
        conversation is seen with a ``user_id`` in this process: its index entry)."""
        cid = _check_id("conversation", conversation_id)
        if user_id is not None:
            _check_id("user", user_id)
        stored = await self._primary.append(cid, _check_message(message), user_id)
        if isinstance(self._shadow, RedisLayout):  # the rollback copy keeps the KV id
            await self._shadow.append(cid, stored, user_id, keep_id=True)
        if self.max_messages is not None or self.max_age is not None:
            self._appends[cid] = self._appends.get(cid, 0) + 1
            if self._appends[cid] % self._trim_every == 0:  # amortised: one listing per N
                await self.trim(cid)
        return stored

    async def history(
        self, conversation_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Message]:
        """The newest ``limit`` messages (older than message id ``before``, if given), in
        chronological order. On KV: one list request, plus one bulk read when some of the
        messages are too big to ride in metadata."""
        cid = _check_id("conversation", conversation_id)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise ConversationError("limit must be an integer from 1 to 1000.")
        if before is not None and not _ID_FORMAT.match(before):
            raise ConversationError(f"'before' must be a message id, not {before[:40]!r}.")
        if self.max_messages is not None and before is None:
            limit = min(limit, self.max_messages)
        messages = self._fresh(await self._primary.newest(cid, limit, before))
        if self.max_messages is not None and before is not None:
            allowed = {mid for mid, _ in (await self._primary.index(cid))[: self.max_messages]}
            messages = [m for m in messages if m.id in allowed]
        return list(reversed(messages))

    async def _kept(self, cid: str) -> list[str]:
        """Ids within the cap and the age limit, newest first."""
        index = await self._primary.index(cid)
        if self.max_age is not None:
            oldest = self._clock() - self.max_age
            index = [(mid, at) for mid, at in index if at >= oldest]
        return [mid for mid, _ in index][: self.max_messages]

    async def count(self, conversation_id: str) -> int:
        """How many messages the conversation holds (KV: one list request per 1,000)."""
        return len(await self._kept(_check_id("conversation", conversation_id)))

    async def trim(self, conversation_id: str) -> int:
        """Delete the messages beyond the cap (or older than the age limit)."""
        cid = _check_id("conversation", conversation_id)
        kept = set(await self._kept(cid))
        extra = [mid for mid, _ in await self._primary.index(cid) if mid not in kept]
        await self._primary.remove(cid, extra)
        if self._shadow is not None:
            await self._shadow.remove(cid, extra)
        return len(extra)

    async def delete(self, conversation_id: str) -> int:
        cid = _check_id("conversation", conversation_id)
        removed = await self._primary.delete(cid)
        if self._shadow is not None:
            await self._shadow.delete(cid)
        return removed

    async def conversations(self, user_id: str) -> list[str]:
        """The ids of the conversations ``user_id`` appended to."""
        return await self._primary.conversations(_check_id("user", user_id))
