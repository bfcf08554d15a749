"""Sessions: a sliding expiry that does not write on every read, and an absolute one.

A session id is a bearer credential (256 random bits from ``secrets``), so it is never a
key name: the session lives under ``{prefix}{sha256(id)}``, and logs, dual-mode warnings,
migration manifests and ``verify`` output see only that digest. The record is JSON
``{"data", "created", "expires", "ends"}``:

* ``expires`` slides: reading a session refreshes it only when less than ``refresh_below``
  seconds are left (half the lifetime by default), so a busy session is written at most
  once per half-lifetime, far under KV's 1 write per second per key;
* ``ends`` does not: ``created + max_lifetime``, after which the session is gone however
  busy it was (log in again). The KV entry's TTL never outlives it.

``regenerate`` issues a new id for the same data (against session fixation). With a
``signing_key`` every id carries a MAC: an id the service did not issue is refused without a
storage read, so random bearer tokens cannot spend the KV budget. Works on every backend of
``open_store()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from brainbot.errors import SessionError, SessionNotFound
from brainbot.kv.limits import JSON, MIN_EXPIRATION_TTL
from brainbot.storage.protocol import Store

# Ids are token_urlsafe(32) (256 bits, 43 characters), then, when signed, "." and a
# 144-bit MAC (24 characters). A format check only: ids are issued by create().
_ID = re.compile(r"\A[A-Za-z0-9_-]{43}(\.[A-Za-z0-9_-]{24})?\Z")


def session_key(prefix: str, session_id: str) -> str:
    """Where the session ``session_id`` is stored: a digest, never the credential."""
    return prefix + hashlib.sha256(session_id.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    data: dict[str, JSON]
    created: float
    expires: float
    ends: float

    def __repr__(self) -> str:  # the id is a credential: keep it out of logs
        return f"Session(id='{self.id[:4]}…', expires={self.expires:.0f})"


class SessionStore:
    def __init__(
        self,
        store: Store,
        *,
        lifetime: int = 3600,
        max_lifetime: int = 86400,
        refresh_below: int | None = None,
        prefix: str = "session:",
        signing_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime < MIN_EXPIRATION_TTL:
            raise SessionError(f"lifetime must be at least {MIN_EXPIRATION_TTL} s (KV's floor).")
        if max_lifetime < lifetime:
            raise SessionError("max_lifetime must be at least the lifetime.")
        refresh = lifetime // 2 if refresh_below is None else refresh_below
        if not 0 <= refresh < lifetime:
            raise SessionError("refresh_below must be from 0 to less than the lifetime.")
        self.store = store
        self.lifetime = lifetime
        self.max_lifetime = max_lifetime
        self.refresh_below = refresh
        self.prefix = prefix
        self.__signing_key = signing_key
        self._clock = clock

    def __repr__(self) -> str:
        return f"SessionStore(prefix={self.prefix!r}, lifetime={self.lifetime})"

    def _mac(self, random_part: str) -> str:
        assert self.__signing_key is not None
        digest = hmac.new(self.__signing_key, random_part.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def _new_id(self) -> str:
        random_part = secrets.token_urlsafe(32)
        if self.__signing_key is None:
            return random_part
        return f"{random_part}.{self._mac(random_part)}"

    def issued_here(self, session_id: object) -> bool:
        """Whether ``session_id`` is well formed (and, when ids are signed, carries a MAC of
        this service): decided without reading storage."""
        if not isinstance(session_id, str) or not _ID.match(session_id):
            return False
        random_part, _, mac = session_id.partition(".")
        if self.__signing_key is None:
            return not mac
        return bool(mac) and hmac.compare_digest(mac, self._mac(random_part))

    def _key(self, session_id: str) -> str:
        if not self.issued_here(session_id):
            raise SessionError("Malformed session id.")
        return session_key(self.prefix, session_id)

    async def _write(
        self,
        session_id: str,
        data: dict[str, JSON],
        created: float,
        ends: float,
        *,
        existing: bool = False,
    ) -> Session | None:
        """Store the session; with ``existing`` only over a stored one (SET XX: atomic
        across processes on the embedded KV, the gateway and Redis, within one process
        through REST alone), None if there is none: a write that follows a read must not
        bring back a session another process deleted meanwhile (a logout)."""
        now = self._clock()
        expires = min(now + self.lifetime, ends)
        session = Session(session_id, data, created, expires, ends)
        body = {"data": data, "created": created, "expires": expires, "ends": ends}
        # reads enforce the exact end; the entry may outlive it by up to KV's 60 s floor
        ttl = max(int(expires - now + 0.999), MIN_EXPIRATION_TTL)
        written = await self.store.set(self._key(session_id), json.dumps(body), ex=ttl, xx=existing)
        return session if written else None

    async def create(self, data: dict[str, JSON] | None = None) -> Session:
        """A new session (a new id every time: ids are never reused or chosen by clients)."""
        try:
            json.dumps(data or {})
        except (TypeError, ValueError) as exc:
            raise SessionError(f"Session data must be JSON: {exc}") from None
        now = self._clock()
        session = await self._write(self._new_id(), dict(data or {}), now, now + self.max_lifetime)
        assert session is not None  # written unconditionally
        return session

    async def _read(self, session_id: str) -> Session | None:
        raw = await self.store.get(self._key(session_id))
        if raw is None:
            return None
        try:
            body = json.loads(raw)
            session = Session(
                session_id,
                dict(body["data"]),
                float(body["created"]),
                float(body["expires"]),
                float(body.get("ends", body["expires"])),
            )
        except (ValueError, TypeError, KeyError):
            return None  # not a session record: no session
        if min(session.expires, session.ends) <= self._clock():
            return None
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session, or None. Refreshes the lifetime only when it runs low (and
        never past the absolute end)."""
        session = await self._read(session_id)
        if session is None:
            return None
        left = session.expires - self._clock()
        if left < self.refresh_below and session.expires < session.ends:
            return await self._write(
                session_id, session.data, session.created, session.ends, existing=True
            )
        return session

    async def update(self, session_id: str, data: dict[str, JSON]) -> Session:
        """Replace the session's data (and renew its lifetime); last writer wins, but a
        session deleted meanwhile stays deleted."""
        current = await self._read(session_id)  # no refresh: the write below renews it
        if current is not None:
            session = await self._write(
                session_id, dict(data), current.created, current.ends, existing=True
            )
            if session is not None:
                return session
        raise SessionNotFound("no such session")

    async def delete(self, session_id: str) -> bool:
        return bool(await self.store.delete(self._key(session_id)))

    async def regenerate(self, session_id: str) -> Session:
        """A new id for the same data; the old id is deleted (on Cloudflare, other
        locations may still see it for up to a minute: KV is eventually consistent). If
        another process deleted the old one meanwhile (a logout), the new one goes too."""
        current = await self._read(session_id)
        if current is None:
            raise SessionNotFound("no such session")
        fresh = await self._write(self._new_id(), current.data, current.created, current.ends)
        assert fresh is not None  # written unconditionally
        if not await self.delete(session_id):
            await self.delete(fresh.id)
            raise SessionNotFound("no such session")
        return fresh
