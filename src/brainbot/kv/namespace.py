"""The one KV namespace interface, and the small value types it speaks.

It mirrors Cloudflare Workers KV operation for operation (get with expiry and metadata,
put, delete, list, and the bulk forms), so code written against the embedded KV runs
unchanged on Cloudflare. Every implementation passes the same contract test suite
(``tests/contract/``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar, runtime_checkable

from brainbot.errors import ServerError
from brainbot.kv.limits import JSON


@dataclass(frozen=True, slots=True)
class Consistency:
    """What a namespace promises about its writes; the stores above size their own rules
    (write spacing, read-your-writes memory) from it, never from configuration flags."""

    eventual: bool
    """Other readers (and lists) may see a write late: 60 s or more on Cloudflare."""
    key_write_interval: float
    """Seconds the service wants between two writes to one key (Cloudflare: 1 s, else 429)."""


STRONG = Consistency(eventual=False, key_write_interval=0.0)
"""The embedded KV: one SQLite file, every reader sees every committed write at once."""
CLOUDFLARE = Consistency(eventual=True, key_write_interval=1.0)
"""Workers KV, through the REST API or a Worker's binding."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored value with its absolute expiry (epoch seconds) and metadata."""

    value: bytes
    expiration: int | None = None
    metadata: JSON = None

    def text(self) -> str:
        return self.value.decode("utf-8")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One name of a list page; values are not listed, expiry and metadata are."""

    name: str
    expiration: int | None = None
    metadata: JSON = None


@dataclass(frozen=True, slots=True)
class ListPage:
    keys: list[KeyInfo]
    cursor: str | None
    """Pass back to get the next page; None once the listing is complete.

    A page may be empty while the cursor says more keys remain, as on Cloudflare."""

    @property
    def complete(self) -> bool:
        return self.cursor is None


@dataclass(frozen=True, slots=True)
class PutItem:
    """One write of a bulk put."""

    key: str
    value: bytes | str
    expiration: int | None = None
    expiration_ttl: int | None = None
    metadata: JSON = None


@dataclass(frozen=True, slots=True)
class BulkResult:
    """Per-key outcome of a bulk write or delete.

    Keys in ``unsuccessful_keys`` were not written (or deleted) even after the
    implementation's own retries; the caller decides whether to try again later.
    """

    successful_key_count: int
    unsuccessful_keys: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.unsuccessful_keys


@runtime_checkable
class KVNamespace(Protocol):
    """A Cloudflare Workers KV namespace: embedded (SQLite), REST, or gateway Worker."""

    @property
    def consistency(self) -> Consistency:
        """How this namespace's writes show to other readers (see :class:`Consistency`)."""
        ...

    async def get(self, key: str) -> Entry | None:
        """The live entry under ``key``, or None if missing or expired."""
        ...

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expiration: int | None = None,
        expiration_ttl: int | None = None,
        metadata: JSON = None,
    ) -> None:
        """Replace value, expiry and metadata of ``key`` together."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key succeeds."""
        ...

    async def list(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> ListPage:
        """One page of live names starting with ``prefix``, in UTF-8 byte order."""
        ...

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        """Write any number of items; every item is validated before anything is written."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        """Delete any number of keys."""
        ...

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        """Read any number of keys; missing or expired ones map to None."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


R = TypeVar("R")

Writes = Mapping[str, PutItem | None]
"""What a transaction writes: a key's new entry, or None to delete it."""

Change = Callable[[Mapping[str, Entry | None]], tuple[Writes, R]]
"""A transaction's body: given the live entries of its keys (None: absent), what to write
and what to answer. It may run more than once (again on a conflict) and does no I/O."""


class Coordinated(Protocol):
    """A namespace whose read-modify-writes are atomic across every process and instance
    (``coordinated`` is True): the embedded KV by SQLite transactions, the gateway by its
    Durable Object. KV itself has no compare-and-swap, so the REST client is not one.

    ``read_exact`` and ``write_exact`` go through the same coordinator, so what they read
    is exactly what the last acknowledged write left (no eventual consistency for keys it
    coordinates)."""

    coordinated: bool

    async def read_exact(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        """The authoritative live entries of ``keys``."""
        ...

    async def write_exact(self, writes: Writes) -> None:
        """Apply ``writes`` (all of them or none) whatever the keys held."""
        ...

    async def transact(self, keys: Sequence[str], change: Change[R]) -> R:
        """Run ``change`` on the entries of ``keys`` and apply its writes only if no other
        writer changed those keys in between; an exception from ``change`` writes nothing
        and propagates."""
        ...


def coordinator_of(namespace: object) -> Coordinated | None:
    """``namespace`` as a :class:`Coordinated` one, or None when it is not coordinated."""
    if getattr(namespace, "coordinated", False) is True:
        return namespace  # type: ignore[return-value]
    return None


async def iter_keys(
    namespace: KVNamespace, *, prefix: str = "", page_size: int = 1000
) -> AsyncIterator[KeyInfo]:
    """Every live name under ``prefix``, following cursors across (possibly empty) pages."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = await namespace.list(prefix=prefix, cursor=cursor, limit=page_size)
        for info in page.keys:
            yield info
        if page.cursor is None:
            return
        if page.cursor in seen:  # a cursor cycle would list for ever
            raise ServerError(f"The listing's cursor {page.cursor!r} came back: no progress.")
        seen.add(page.cursor)
        cursor = page.cursor
