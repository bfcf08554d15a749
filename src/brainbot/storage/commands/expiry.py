"""Expiry commands: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (with NX/XX/GT/LT), PERSIST, TTL, PTTL.

KV cannot change an expiry without rewriting the entry, and keeps nothing for less than
60 s: the exact expiry lives in the entry's metadata and is enforced on every read."""

from __future__ import annotations

from brainbot.errors import ResponseError
from brainbot.storage.codec import Item
from brainbot.storage.commands.args import AbsExpiryT, ExpiryT, at_ms, millis, seconds
from brainbot.storage.engine import Change, CommandFamily, KeyT, reads, writes


class ExpiryCommands(CommandFamily):
    async def _set_expiry(
        self,
        name: KeyT,
        at: int | None,
        *,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
        now_ms: int | None = None,
    ) -> bool:
        if (nx and (xx or gt or lt)) or (gt and lt):
            raise ResponseError("NX and XX, GT or LT options at the same time are not compatible")
        engine = self._engine
        now_ms = engine.now_ms() if now_ms is None else now_ms
        unchanged = Change(False, None, False)

        def change(item: Item | None) -> Change:
            if item is None:
                return unchanged
            current = item.expire_ms
            if at is not None:
                if (nx and current is not None) or (xx and current is None):
                    return unchanged
                if gt and (current is None or at <= current):
                    return unchanged
                if lt and current is not None and at >= current:
                    return unchanged
                if at <= now_ms:  # an expiry in the past deletes, as in Redis
                    return Change(True, None, True)
                engine.check_requested_ttl(at, now_ms)
            elif current is None:
                return unchanged  # persist on a key without a TTL
            item.expire_ms = at
            return Change(True, item, True)

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
        now = self._engine.now_ms()
        at = now + seconds(time, "time") * 1000
        return await self._set_expiry(name, at, nx=nx, xx=xx, gt=gt, lt=lt, now_ms=now)

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
        now = self._engine.now_ms()
        at = now + millis(time, "time")
        return await self._set_expiry(name, at, nx=nx, xx=xx, gt=gt, lt=lt, now_ms=now)

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
        return await self._set_expiry(name, at_ms(when, 1000), nx=nx, xx=xx, gt=gt, lt=lt)

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
        return await self._set_expiry(name, at_ms(when, 1), nx=nx, xx=xx, gt=gt, lt=lt)

    @writes("name")
    async def persist(self, name: KeyT) -> bool:
        return await self._set_expiry(name, None)

    @reads("name", tolerance=1000)
    async def pttl(self, name: KeyT) -> int:
        engine = self._engine
        item = await engine.read(engine.key(name))
        if item is None:
            return -2
        if item.expire_ms is None:
            return -1
        return max(item.expire_ms - engine.now_ms(), 0)

    @reads("name", tolerance=1)
    async def ttl(self, name: KeyT) -> int:
        left = await self.pttl(name)
        return left if left < 0 else (left + 500) // 1000
