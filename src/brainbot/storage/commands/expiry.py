"""Expiry commands: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (with NX/XX/GT/LT), PERSIST, TTL,
PTTL, EXPIRETIME, PEXPIRETIME.

KV cannot change an expiry without rewriting the entry, and keeps nothing for less than
60 s: the exact expiry lives in the entry's metadata and is enforced on every read."""

from __future__ import annotations

import datetime as dt

from brainbot.errors import ResponseError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import AbsExpiryT, ExpiryT, encodable, expire_at, redis_int
from brainbot.storage.engine import Change, CommandFamily, KeyT, reads, writes


class ExpiryCommands(CommandFamily):
    async def _set_expiry(
        self,
        name: KeyT,
        sent: object,
        unit_ms: int,
        *,
        relative: bool,
        command: str,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        """EXPIRE and its kin, checked in Redis's order: what redis-py cannot encode, then
        the flags, then the time (``sent``: an integer or its text, as redis-py sends it)."""
        encodable(sent)
        if nx and (xx or gt or lt):
            raise ResponseError("NX and XX, GT or LT options at the same time are not compatible")
        if gt and lt:
            raise ResponseError("GT and LT options at the same time are not compatible")
        engine = self._engine
        now_ms = engine.now_ms()
        at = expire_at(redis_int(sent), unit_ms, now_ms if relative else 0, command)
        unchanged = Change(False, None, False)

        def change(item: Item | None) -> Change:
            if item is None:
                return unchanged
            current = item.expire_ms
            if (nx and current is not None) or (xx and current is None):
                return unchanged
            if gt and (current is None or at <= current):
                return unchanged
            if lt and current is not None and at >= current:
                return unchanged
            if at <= now_ms:  # an expiry in the past deletes, as in Redis
                return Change(True, None, True)
            engine.check_requested_ttl(at, now_ms)
            return Change(True, Item(item.type, item.data, at), True)

        return bool(await engine.update(name, None, change))

    @writes("name")
    async def expire(
        self,
        name: KeyT,
        time: ExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        sent = int(time.total_seconds()) if isinstance(time, dt.timedelta) else time
        return await self._set_expiry(
            name, sent, 1000, relative=True, command="expire", nx=nx, xx=xx, gt=gt, lt=lt
        )

    @writes("name")
    async def pexpire(
        self,
        name: KeyT,
        time: ExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        sent = int(time.total_seconds() * 1000) if isinstance(time, dt.timedelta) else time
        return await self._set_expiry(
            name, sent, 1, relative=True, command="pexpire", nx=nx, xx=xx, gt=gt, lt=lt
        )

    @writes("name")
    async def expireat(
        self,
        name: KeyT,
        when: AbsExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        sent = int(when.timestamp()) if isinstance(when, dt.datetime) else when
        return await self._set_expiry(
            name, sent, 1000, relative=False, command="expireat", nx=nx, xx=xx, gt=gt, lt=lt
        )

    @writes("name")
    async def pexpireat(
        self,
        name: KeyT,
        when: AbsExpiryT,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> bool:
        sent = int(when.timestamp() * 1000) if isinstance(when, dt.datetime) else when
        return await self._set_expiry(
            name, sent, 1, relative=False, command="pexpireat", nx=nx, xx=xx, gt=gt, lt=lt
        )

    @writes("name")
    async def persist(self, name: KeyT) -> bool:
        def change(item: Item | None) -> Change:
            if item is None or item.expire_ms is None:
                return Change(False, None, False)
            return Change(True, Item(item.type, item.data, None), True)

        return bool(await self._engine.update(name, None, change))

    async def _expiry(self, name: KeyT) -> int:
        """The key's expiry in epoch ms: -2 if it does not exist, -1 if it has none."""
        engine = self._engine
        item = await engine.read(engine.key(name))
        if item is None:
            return -2
        return -1 if item.expire_ms is None else item.expire_ms

    @reads("name", tolerance=1000)
    async def pttl(self, name: KeyT) -> int:
        at = await self._expiry(name)
        return at if at < 0 else max(at - self._engine.now_ms(), 0)

    @reads("name", tolerance=1)
    async def ttl(self, name: KeyT) -> int:
        left = await self.pttl(name)
        return left if left < 0 else (left + 500) // 1000

    @reads("key", tolerance=1000)
    async def pexpiretime(self, key: KeyT) -> int:
        """The absolute expiry in epoch ms (-2: no such key, -1: no expiry)."""
        return await self._expiry(key)

    @reads("key", tolerance=1)
    async def expiretime(self, key: KeyT) -> int:
        """The absolute expiry in epoch seconds, rounded as Redis rounds it."""
        at = await self.pexpiretime(key)
        return at if at < 0 else (at + 500) // 1000
