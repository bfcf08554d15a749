"""Recent writes laid over a namespace's answers: read-your-writes, and its inverse, list lag.

Cloudflare shows a write to other locations, and in ``list``, 60 s or more after it was
made. Two wrappers lay a journal of recent writes over the answers of the namespace
underneath; both merge it into list pages with the one function :func:`_overlaid_page`:

* :class:`ReadYourWrites` remembers what *this process* wrote in the last ``window``
  seconds (the state after the write) and answers its gets and lists with it, so a process
  always reads its own writes, whatever the service's lag. ``KVStore`` and the conversation
  store share one, sized from the namespace's :class:`~brainbot.kv.namespace.Consistency`.
* :class:`ListLag` remembers the state *before* each write for ``lag`` seconds and shows it
  in lists: how ``brainbot kv serve --list-lag`` simulates Cloudflare's lagging lists.
  ``ReadYourWrites`` over ``ListLag`` is the contract test of the former.

Paging: the wrappers hand out their own cursors (the namespace's cursor plus the last name
shown), so a remembered key is shown exactly once, on the page whose range holds its name,
and a page never holds more than ``limit`` names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import builtins
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Self, TypeVar

from brainbot.kv.errors import InvalidCursor
from brainbot.kv.limits import (
    JSON,
    absolute_expiration,
    check_cursor,
    check_prefix,
    key_bytes,
    list_limit,
    value_bytes,
)
from brainbot.kv.namespace import (
    BulkResult,
    Change,
    Consistency,
    Coordinated,
    Entry,
    KeyInfo,
    KVNamespace,
    ListPage,
    PutItem,
    R,
    Writes,
    coordinator_of,
)

S = TypeVar("S", Entry, KeyInfo)
_CURSOR_PREFIX = "o1."


@dataclass(slots=True)
class _Note(Generic[S]):
    at: float
    state: S | None
    """The key as it should look (None: absent)."""
    size: int


class _Journal(Generic[S]):
    """Recent notes by key, oldest first, dropped after ``window`` seconds or past the
    count and byte bounds; kept sorted by UTF-8 name too, for page ranges."""

    def __init__(
        self, window: float, clock: Callable[[], float], max_keys: int, max_bytes: int
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._clock = clock
        self._notes: OrderedDict[str, _Note[S]] = OrderedDict()
        self._names: builtins.list[bytes] = []  # sorted UTF-8 names of the notes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._notes)

    def fresh(self, key: str) -> tuple[bool, S | None]:
        """Whether ``key`` has a note young enough to trust, and its state."""
        note = self._notes.get(key)
        if note is None or self._clock() - note.at >= self.window:
            return False, None
        return True, note.state

    def note(self, key: str, state: S | None, size: int) -> None:
        old = self._notes.pop(key, None)
        if old is None:
            bisect.insort(self._names, key.encode("utf-8"))
        else:
            self._bytes -= old.size
        self._notes[key] = _Note(self._clock(), state, size)
        self._bytes += size
        self._prune()

    def touch(self, key: str) -> None:
        """Keep a note's state, restarting its window (moves it to the newest end); a note
        already dropped (its window ran out meanwhile) stays dropped."""
        note = self._notes.pop(key, None)
        if note is not None:
            note.at = self._clock()
            self._notes[key] = note

    def in_range(
        self, prefix: str, after: str | None, upto: str | None
    ) -> builtins.list[tuple[str, S | None]]:
        """Fresh notes under ``prefix`` with ``after < name <= upto`` (None: unbounded)."""
        self._prune()
        low = (after or prefix).encode("utf-8")
        start = (
            bisect.bisect_right(self._names, low) if after else bisect.bisect_left(self._names, low)
        )
        high = None if upto is None else upto.encode("utf-8")
        raw_prefix = prefix.encode("utf-8")
        found = []
        for raw in self._names[start:]:
            if high is not None and raw > high:
                break
            if not raw.startswith(raw_prefix):
                if raw > raw_prefix:
                    break
                continue
            name = raw.decode("utf-8")
            found.append((name, self._notes[name].state))
        return found

    def _prune(self) -> None:
        cutoff = self._clock() - self.window
        while self._notes:
            key, oldest = next(iter(self._notes.items()))
            if not (
                oldest.at <= cutoff
                or len(self._notes) > self.max_keys
                or self._bytes > self.max_bytes
            ):
                return
            del self._notes[key]
            self._bytes -= oldest.size
            raw = key.encode("utf-8")
            del self._names[bisect.bisect_left(self._names, raw)]


def _wrap_cursor(inner: str | None, after: str | None) -> str:
    text = json.dumps([inner, after], separators=(",", ":"), ensure_ascii=False)
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unwrap_cursor(cursor: str) -> tuple[str | None, str | None]:
    if not cursor.startswith(_CURSOR_PREFIX):
        raise InvalidCursor(f"Invalid cursor {cursor[:40]!r}: not a cursor of this namespace.")
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        inner, after = json.loads(raw)
        if not all(part is None or isinstance(part, str) for part in (inner, after)):
            raise ValueError("not strings")
    except (binascii.Error, ValueError, TypeError):
        raise InvalidCursor(f"Invalid cursor {cursor[:40]!r}: it is corrupt.") from None
    return inner, after


async def _overlaid_page(
    inner: KVNamespace,
    notes: Callable[[str, str | None, str | None], builtins.list[tuple[str, KeyInfo | None]]],
    *,
    prefix: str,
    cursor: str | None,
    limit: int,
) -> ListPage:
    """One page of ``inner``'s listing with the journal's notes laid over it.

    The inner page covers the names up to its last one (all names, once it is the last
    page); notes in that range replace what the inner page says of their keys. When notes
    add more names than ``limit``, the next page asks the inner namespace for the same page
    again and skips what was shown (rare: it needs many recent writes in one range)."""
    inner_cursor, after = (None, None) if cursor is None else _unwrap_cursor(cursor)
    page = await inner.list(prefix=prefix, cursor=inner_cursor, limit=limit)
    after_raw = None if after is None else after.encode("utf-8")
    if page.cursor is None:
        upto = None  # the last page covers every name that is left
    elif page.keys:
        upto = page.keys[-1].name
    else:
        upto = after or ""  # an empty page with more to come covers nothing yet
    shown = {
        info.name: info
        for info in page.keys
        if after_raw is None or info.name.encode("utf-8") > after_raw
    }
    for name, state in notes(prefix, after, upto):
        if state is None:
            shown.pop(name, None)
        else:
            shown[name] = state
    ordered = sorted(shown.values(), key=lambda info: info.name.encode("utf-8"))
    if len(ordered) > limit:
        ordered = ordered[:limit]
        return ListPage(ordered, _wrap_cursor(inner_cursor, ordered[-1].name))
    if page.cursor is None:
        return ListPage(ordered, None)
    if after is not None and upto is not None and upto.encode("utf-8") < after.encode("utf-8"):
        upto = after  # a page re-read after a concurrent delete: never step back
    return ListPage(ordered, _wrap_cursor(page.cursor, upto or None))


class ReadYourWrites:
    """``inner`` with this process's writes of the last ``window`` seconds answered from
    memory: gets and lists always show them, whatever the service's lag.

    Only writes that reached the namespace are remembered (a refused or failed write leaves
    the memory as it was); deletes are remembered as absent. Bounded by ``max_keys`` and
    ``max_bytes``. The price: for a key this process wrote within the window, a later write
    by another process stays unseen here until the window ends."""

    def __init__(
        self,
        inner: KVNamespace,
        window: float = 60.0,
        *,
        max_keys: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0:
            raise ValueError("A read-your-writes window must be positive.")
        self.inner = inner
        self._clock = clock
        self._journal: _Journal[Entry] = _Journal(window, clock, max_keys, max_bytes)

    @property
    def consistency(self) -> Consistency:
        return self.inner.consistency

    @property
    def window(self) -> float:
        return self._journal.window

    def __repr__(self) -> str:
        return f"ReadYourWrites({self.inner!r}, window={self.window:g})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def remembered(self) -> builtins.list[str]:
        """The keys answered from memory right now (for stores that must also visit them)."""
        return [name for name, _ in self._journal.in_range("", None, None)]

    # -- the Coordinated capability of ``inner``, passed through ---------------------------
    # Exact reads go to the coordinator, never to the memory (which may be older than
    # another process's acknowledged write); what it writes is remembered for lists.

    @property
    def coordinated(self) -> bool:
        return coordinator_of(self.inner) is not None

    def _coordinator(self) -> Coordinated:
        inner = coordinator_of(self.inner)
        if inner is None:
            raise TypeError(f"{self.inner!r} is not coordinated")
        return inner

    def _note_writes(self, writes: Writes) -> None:
        for key, item in writes.items():
            if item is None:
                self._journal.note(key, None, 64)
            else:
                self._remember(item)

    async def read_exact(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        return await self._coordinator().read_exact(keys)

    async def write_exact(self, writes: Writes) -> None:
        await self._coordinator().write_exact(writes)
        self._note_writes(writes)

    async def transact(self, keys: Sequence[str], change: Change[R]) -> R:
        applied: builtins.list[Writes] = []

        def recorded(entries: Mapping[str, Entry | None]) -> tuple[Writes, R]:
            writes, result = change(entries)
            applied[:] = [writes]  # the last run's writes are the ones committed
            return writes, result

        result = await self._coordinator().transact(keys, recorded)
        if applied:
            self._note_writes(applied[0])
        return result

    def _live(self, entry: Entry | None) -> Entry | None:
        if entry is None or entry.expiration is None or entry.expiration > self._clock():
            return entry
        return None

    def _remember(self, item: PutItem) -> None:
        data = value_bytes(item.value)
        expiration = absolute_expiration(
            expiration=item.expiration, expiration_ttl=item.expiration_ttl, now=self._clock()
        )
        self._journal.note(item.key, Entry(data, expiration, item.metadata), 96 + len(data))

    # -- reads -------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        known, entry = self._journal.fresh(key)
        if known:
            key_bytes(key)
            return self._live(entry)
        return await self.inner.get(key)

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        found: dict[str, Entry | None] = {}
        missing = []
        for key in dict.fromkeys(keys):
            known, entry = self._journal.fresh(key)
            if known:
                key_bytes(key)
                found[key] = self._live(entry)
            else:
                missing.append(key)
        if missing:
            found.update(await self.inner.get_many(missing))
        return {key: found[key] for key in keys}

    async def list(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_prefix(prefix)
        limit = list_limit(limit)
        now = self._clock()

        def notes(
            p: str, after: str | None, upto: str | None
        ) -> builtins.list[tuple[str, KeyInfo | None]]:
            return [
                (
                    name,
                    None
                    if entry is None or (entry.expiration is not None and entry.expiration <= now)
                    else KeyInfo(name, entry.expiration, entry.metadata),
                )
                for name, entry in self._journal.in_range(p, after, upto)
            ]

        return await _overlaid_page(
            self.inner, notes, prefix=prefix, cursor=check_cursor(cursor), limit=limit
        )

    # -- writes ------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expiration: int | None = None,
        expiration_ttl: int | None = None,
        metadata: JSON = None,
    ) -> None:
        await self.inner.put(
            key, value, expiration=expiration, expiration_ttl=expiration_ttl, metadata=metadata
        )
        self._remember(PutItem(key, value, expiration, expiration_ttl, metadata))

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)
        self._journal.note(key, None, 64)

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        result = await self.inner.put_many(items)
        failed = set(result.unsuccessful_keys)
        for item in {item.key: item for item in items}.values():
            if item.key not in failed:  # what did land is remembered even if some did not
                self._remember(item)
        return result

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        result = await self.inner.delete_many(keys)
        failed = set(result.unsuccessful_keys)
        for key in dict.fromkeys(keys):
            if key not in failed:
                self._journal.note(key, None, 64)
        return result


class ListLag:
    """``inner`` whose lists trail its writes by ``lag`` seconds: a key written within the
    lag is listed as it was before (absent if it was new, present if it was deleted).
    Gets are not delayed. Used by ``brainbot kv serve --list-lag`` for tests."""

    def __init__(
        self, inner: KVNamespace, lag: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if lag <= 0:
            raise ValueError("A list lag must be positive.")
        self.inner = inner
        self._journal: _Journal[KeyInfo] = _Journal(lag, clock, 10**9, 2**62)
        self._lock = asyncio.Lock()  # two writes to one key cannot both record the same past

    @property
    def consistency(self) -> Consistency:
        return self.inner.consistency

    def __repr__(self) -> str:
        return f"ListLag({self.inner!r}, lag={self._journal.window:g})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _writing(self, keys: Sequence[str], write: Callable[[], object]) -> None:
        async with self._lock:
            stale = [k for k in dict.fromkeys(keys) if not self._journal.fresh(k)[0]]
            before = await self.inner.get_many(stale) if stale else {}
            for key, entry in before.items():
                info = None if entry is None else KeyInfo(key, entry.expiration, entry.metadata)
                self._journal.note(key, info, 0)
            outcome = write()
            if asyncio.iscoroutine(outcome):
                await outcome
            for key in dict.fromkeys(keys):
                self._journal.touch(key)

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        return await self.inner.get_many(keys)

    async def list(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_prefix(prefix)
        return await _overlaid_page(
            self.inner,
            self._journal.in_range,
            prefix=prefix,
            cursor=check_cursor(cursor),
            limit=list_limit(limit),
        )

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expiration: int | None = None,
        expiration_ttl: int | None = None,
        metadata: JSON = None,
    ) -> None:
        await self._writing(
            [key],
            lambda: self.inner.put(
                key, value, expiration=expiration, expiration_ttl=expiration_ttl, metadata=metadata
            ),
        )

    async def delete(self, key: str) -> None:
        await self._writing([key], lambda: self.inner.delete(key))

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        result: builtins.list[BulkResult] = []

        async def write() -> None:
            result.append(await self.inner.put_many(items))

        await self._writing([item.key for item in items], write)
        return result[0]

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        result: builtins.list[BulkResult] = []

        async def write() -> None:
            result.append(await self.inner.delete_many(keys))

        await self._writing(keys, write)
        return result[0]
