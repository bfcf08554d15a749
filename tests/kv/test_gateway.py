"""The gateway transport against our Worker in Miniflare: signed batches, concurrent
operations sharing one request, retries as the REST client's, routing by purpose, secrets."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from brainbot.composition import open_namespace
from brainbot.config import Settings
from brainbot.kv import (
    CloudflareKV,
    EmbeddedKV,
    Entry,
    GatewayKV,
    KVRemoteError,
    PutItem,
    RetryPolicy,
)
from tests.support.processes import Service


async def test_concurrent_operations_share_one_signed_request(
    gateway: Service, gateway_secret: str
) -> None:
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        await kv.put_many([PutItem(f"batch:{i}", bytes([i]) * 3) for i in range(100)])
        before = kv.requests
        got = await asyncio.gather(*(kv.get(f"batch:{i}") for i in range(100)))
        assert got == [Entry(bytes([i]) * 3) for i in range(100)]
        assert kv.requests - before == 1  # 100 gets = 200 KV operations, one invocation
        before = kv.requests
        await asyncio.gather(*(kv.get(f"batch:{i % 100}") for i in range(600)))
        assert kv.requests - before == 2  # split at the Worker's 1,000 KV operations
        await kv.delete_many([f"batch:{i}" for i in range(100)])


async def test_a_wrong_secret_is_refused_and_not_retried(
    gateway: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "the-wrong-secret-" + "y" * 16
    async with GatewayKV(gateway.url, secret) as kv:
        with pytest.raises(KVRemoteError) as caught:
            await kv.get("k")
        assert caught.value.status == 401
        assert kv.requests == 1
        assert secret not in repr(kv) + repr(vars(kv)) + str(caught.value)
    assert secret not in caplog.text


async def test_server_errors_are_retried_like_the_rest_clients(
    gateway: Service, gateway_secret: str
) -> None:
    class FirstTwoFail(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.real, self.calls = httpx.AsyncHTTPTransport(), 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            if self.calls <= 2:
                return httpx.Response(503, json={"error": "down"})
            return await self.real.handle_async_request(request)

    transport = FirstTwoFail()
    async with GatewayKV(
        gateway.url, gateway_secret, transport=transport, retry=RetryPolicy(attempts=5)
    ) as kv:
        await kv.put("retried", b"\x00\xff")
        assert await kv.get("retried") == Entry(b"\x00\xff")
        await kv.delete("retried")
    assert transport.calls == 5  # 2 refused, then the put, the get and the delete


def test_live_traffic_goes_to_the_gateway_bulk_loads_to_rest(tmp_path: object) -> None:
    settings = Settings(  # type: ignore[call-arg]
        BRAINBOT_DATA_DIR=tmp_path,
        BRAINBOT_KV_GATEWAY_URL="https://gateway.example.workers.dev",
        BRAINBOT_KV_GATEWAY_SECRET="s" * 32,
        CLOUDFLARE_ACCOUNT_ID="acc",
        CLOUDFLARE_KV_NAMESPACE_ID="ns",
        CLOUDFLARE_KV_API_TOKEN="t" * 32,
    )
    assert isinstance(open_namespace(settings, purpose="live"), GatewayKV)
    assert isinstance(open_namespace(settings, purpose="bulk"), CloudflareKV)
    local = Settings(BRAINBOT_DATA_DIR=tmp_path)  # type: ignore[call-arg]
    assert isinstance(open_namespace(local, purpose="live"), EmbeddedKV)
    with pytest.raises(ValueError, match="plain http"):
        GatewayKV("http://gateway.example.com", "s" * 32)
