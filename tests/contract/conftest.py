"""The targets the one contract suite runs on, unchanged.

* ``embedded``: :class:`EmbeddedKV` on a temporary SQLite file, with a fake clock;
* ``rest-local``: :class:`CloudflareKV` over HTTP to ``brainbot kv serve``;
* ``rest-miniflare``: :class:`CloudflareKV` over HTTP to our REST Worker inside Miniflare,
  Cloudflare's own KV simulator running the real workerd runtime;
* ``gateway-miniflare``: :class:`GatewayKV`, batches signed for our gateway Worker inside
  Miniflare (the live-traffic path).

A target also says what it can show: moving its clock forward (expiry), injecting faults.
Tests that need a capability a target lacks skip with the reason, by name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import httpx
import pytest

from brainbot.kv import EmbeddedKV, GatewayKV, KVNamespace, ListLag, iter_keys
from brainbot.kv.faults import Faults
from brainbot.kv.gateway import signed_headers
from tests.support.kv import fault_args, rest_client
from tests.support.processes import Service, start_kv_server


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@dataclass
class Target:
    name: str
    kv: KVNamespace
    now: Callable[[], float]
    advance_clock: Callable[[float], Awaitable[None]] | None = None
    """Moves the target's clock forward; None where the target cannot."""
    with_faults: Callable[[Faults], AbstractAsyncContextManager[KVNamespace]] | None = None
    """A namespace of this target whose server injects faults; None where it cannot."""
    fault_kinds: frozenset[str] = frozenset()
    """The faults ``with_faults`` can inject (names of ``Faults`` fields); empty: all."""

    async def advance(self, seconds: float) -> None:
        if self.advance_clock is None:
            pytest.skip(f"{self.name}: cannot move its clock, so expiry cannot be shown here")
        await self.advance_clock(seconds)

    def faulty(self, faults: Faults, why: str) -> AbstractAsyncContextManager[KVNamespace]:
        default = Faults()
        asked = {
            f.name
            for f in fields(faults)
            if f.name != "seed" and getattr(faults, f.name) != getattr(default, f.name)
        }
        if self.with_faults is None or (self.fault_kinds and not asked <= self.fault_kinds):
            pytest.skip(f"{self.name}: {why}")
        return self.with_faults(faults)


_server_offsets: dict[str, float] = {}


def _http_clock(
    url: str, token: str, path: str
) -> tuple[Callable[[], float], Callable[[float], Awaitable[None]]]:
    root = url.split("/client/v4")[0]
    _server_offsets.setdefault(root, 0.0)

    def now() -> float:
        return time.time() + _server_offsets[root]

    async def advance(seconds: float) -> None:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                root + path, json={"advance": seconds}, headers={"Authorization": f"Bearer {token}"}
            )
            response.raise_for_status()
        _server_offsets[root] += seconds

    return now, advance


def _signed_clock(
    url: str, secret: str
) -> tuple[Callable[[], float], Callable[[float], Awaitable[None]]]:
    """The gateway's test clock, behind the same HMAC signature as its batches."""
    import json

    _server_offsets.setdefault(url, 0.0)

    def now() -> float:
        return time.time() + _server_offsets[url]

    async def advance(seconds: float) -> None:
        body = json.dumps({"advance": seconds}).encode()
        async with httpx.AsyncClient() as http:
            response = await http.post(
                url + "/__sim/clock",
                content=body,
                headers=signed_headers(secret, "POST", url + "/__sim/clock", body),
            )
            response.raise_for_status()
        _server_offsets[url] += seconds

    return now, advance


async def _empty(kv: KVNamespace) -> None:
    keys = [info.name async for info in iter_keys(kv)]
    if keys:
        await kv.delete_many(keys)


TARGETS = ["embedded", "rest-local", "rest-miniflare", "gateway-miniflare"]


@pytest.fixture(params=TARGETS)
async def target(
    request: pytest.FixtureRequest, tmp_path: Path, api_token: str
) -> AsyncIterator[Target]:
    name = request.param
    if name == "embedded":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        @asynccontextmanager
        async def lagging(faults: Faults) -> AsyncIterator[KVNamespace]:
            # the one fault an embedded namespace can show: lists trailing writes (ListLag)
            inner = EmbeddedKV(tmp_path / f"lag-{uuid.uuid4().hex}.sqlite3")
            async with ListLag(inner, faults.list_lag) as kv:
                yield kv

        async with EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock) as kv:
            yield Target(name, kv, clock, advance, lagging, frozenset({"list_lag"}))
        return

    if name == "rest-local":
        server: Service = request.getfixturevalue("kv_server")
        now, advance = _http_clock(server.url, api_token, "/__brainbot/clock")

        @asynccontextmanager
        async def with_faults(faults: Faults) -> AsyncIterator[KVNamespace]:
            service = start_kv_server(
                tmp_path / f"faulty-{uuid.uuid4().hex}", api_token, *fault_args(faults)
            )
            try:
                async with rest_client(service.url, api_token, "faulty") as kv:
                    yield kv
            finally:
                service.stop()

        async with rest_client(server.url, api_token, uuid.uuid4().hex, clock=now) as kv:
            yield Target(name, kv, now, advance, with_faults)
        return

    if name == "gateway-miniflare":
        gateway: Service = request.getfixturevalue("gateway")
        secret: str = request.getfixturevalue("gateway_secret")
        now, advance = _signed_clock(gateway.url, secret)
        async with GatewayKV(gateway.url, secret, clock=now) as kv:
            await _empty(kv)  # one namespace for the session: start each test empty
            yield Target(name, kv, now, advance)
        return

    sim: Service = request.getfixturevalue("miniflare")
    now, advance = _http_clock(sim.url, api_token, "/__sim/clock")
    async with rest_client(sim.url, api_token, "miniflare", clock=now) as kv:
        await _empty(kv)  # one namespace for the session: start each test empty
        yield Target(name, kv, now, advance)
