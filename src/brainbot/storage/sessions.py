"""Sessions with sliding expiry that does not write on every read.

A session is one key ``{prefix}{id}`` holding JSON ``{"data", "created", "expires"}`` with
a TTL of the session lifetime. Reading a session refreshes its lifetime only when less than
``refresh_below`` seconds are left (half the lifetime by default), so a busy session is
written at most once per half-lifetime: far under KV's 1 write per second per key. Ids are
256 random bits from ``secrets``; ``regenerate`` issues a new id for the same data (after
a login, against session fixation). Works on every backend of ``open_store()``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from brainbot.errors import SessionError, SessionNotFound
from brainbot.kv.limits import JSON, MIN_EXPIRATION_TTL
from brainbot.storage.protocol import Store

# New ids are token_urlsafe(32) (256 bits, 43 characters); migrated legacy ids may differ.
# (a format check only: ids are issued by create(), never chosen by clients)
_ID = re.compile(r"\A[A-Za-z0-9_.:-]{16,128}\Z")


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    data: dict[str, JSON]
    created: float
    expires: float

    def __repr__(self) -> str:  # the id is a credential: keep it out of logs
        return f"Session(id='{self.id[:6]}…', expires={self.expires:.0f})"


class SessionStore:
    def __init__(
        self,
        store: Store,
        *,
        lifetime: int = 3600,
        refresh_below: int | None = None,
        prefix: str = "session:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime < MIN_EXPIRATION_TTL:
            raise SessionError(f"lifetime must be at least {MIN_EXPIRATION_TTL} s (KV's floor).")
        refresh = lifetime // 2 if refresh_below is None else refresh_below
        if not 0 <= refresh < lifetime:
            raise SessionError("refresh_below must be from 0 to less than the lifetime.")
        self.store = store
        self.lifetime = lifetime
        self.refresh_below = refresh
        self.prefix = prefix
        self._clock = clock

    def _key(self, session_id: str) -> str:
        if not isinstance(session_id, str) or not _ID.match(session_id):
            raise SessionError("Malformed session id.")
        return self.prefix + session_id

    async def _write(self, session_id: str, data: dict[str, JSON], created: float) -> Session:
        now = self._clock()
        session = Session(session_id, data, created, now + self.lifetime)
        body = {"data": data, "created": created, "expires": session.expires}
        await self.store.set(self._key(session_id), json.dumps(body), ex=self.lifetime)
        return session

    async def create(self, data: dict[str, JSON] | None = None) -> Session:
        try:
            json.dumps(data or {})
        except (TypeError, ValueError) as exc:
            raise SessionError(f"Session data must be JSON: {exc}") from None
        return await self._write(secrets.token_urlsafe(32), dict(data or {}), self._clock())

    async def _read(self, session_id: str) -> Session | None:
        raw = await self.store.get(self._key(session_id))
        if raw is None:
            return None
        body = json.loads(raw)
        if body["expires"] <= self._clock():
            return None
        return Session(session_id, body["data"], body["created"], body["expires"])

    async def get(self, session_id: str) -> Session | None:
        """The live session, or None. Refreshes the lifetime only when it runs low."""
        session = await self._read(session_id)
        if session is None:
            return None
        if session.expires - self._clock() < self.refresh_below:
            session = await self._write(session_id, session.data, session.created)
        return session

    async def update(self, session_id: str, data: dict[str, JSON]) -> Session:
        """Replace the session's data (and renew its lifetime); last writer wins."""
        current = await self._read(session_id)  # no refresh: the write below renews it
        if current is None:
            raise SessionNotFound(session_id[:6] + "…")
        return await self._write(session_id, dict(data), current.created)

    async def delete(self, session_id: str) -> bool:
        return bool(await self.store.delete(self._key(session_id)))

    async def regenerate(self, session_id: str) -> Session:
        """A new id for the same data; the old id is deleted (on Cloudflare, other
        locations may still see it for up to a minute: KV is eventually consistent)."""
        current = await self._read(session_id)
        if current is None:
            raise SessionNotFound(session_id[:6] + "…")
        fresh = await self._write(secrets.token_urlsafe(32), current.data, current.created)
        await self.delete(session_id)
        return fresh
