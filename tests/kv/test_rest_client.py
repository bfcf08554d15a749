"""The REST client's resilience, over real HTTP to `brainbot kv serve` with injected faults.

Where a fault must be placed exactly (one 429, one timeout), a thin transport wraps the
real HTTP transport and injects it; everything else is the real server answering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from brainbot.kv import (
    AuthenticationError,
    EmbeddedKV,
    Entry,
    PutItem,
    RetryPolicy,
    iter_keys,
)
from brainbot.kv.faults import Faults
from tests.support.kv import fault_args, rest_client
from tests.support.processes import Service, start_kv_server


@pytest.fixture
def faulty_server(tmp_path: Path, api_token: str) -> Iterator[Callable[[Faults], Service]]:
    started: list[Service] = []

    def start(faults: Faults) -> Service:
        service = start_kv_server(tmp_path / f"srv{len(started)}", api_token, *fault_args(faults))
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


class Recording(httpx.AsyncBaseTransport):
    """Forwards to real HTTP; records requests and answers, and can inject faults."""

    def __init__(self, inject: Callable[[httpx.Request, int], httpx.Response | None] | None = None):
        self.real = httpx.AsyncHTTPTransport()
        self.inject = inject
        self.sent: list[tuple[httpx.Request, bytes]] = []
        self.answers: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.sent.append((request, body))
        if self.inject is not None:
            injected = self.inject(request, len(self.sent))
            if injected is not None:
                return injected
        response = await self.real.handle_async_request(request)
        await response.aread()
        self.answers.append(response)
        return response

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_50000_keys_arrive_byte_exact_through_30_percent_errors_and_partial_bulks(
    faulty_server: Callable[[Faults], Service], api_token: str, tmp_path: Path
) -> None:
    faults = Faults(error_rate=0.3, retry_after=0.01, bulk_failure_rate=0.1, seed=2026)
    service = faulty_server(faults)
    items = [
        PutItem(f"user:{i:05d}", (i.to_bytes(4, "big") + b"\xff\x00payload") * (1 + i % 7))
        if i % 3
        else PutItem(f"user:{i:05d}", f"text value {i} é🙂", metadata={"i": i})
        for i in range(50_000)
    ]
    async with rest_client(service.url, api_token, "load") as kv:
        result = await kv.put_many(items)
    assert result.ok, result.unsuccessful_keys[:10]
    assert result.successful_key_count == 50_000
    # Read back from the server's own storage: the ground truth, with no faults in the way.
    async with EmbeddedKV(tmp_path / "srv0" / "load.sqlite3") as stored:
        got = await stored.get_many([item.key for item in items])
        assert sum([1 async for _ in iter_keys(stored)]) == 50_000
    for item in items:
        value = item.value.encode() if isinstance(item.value, str) else item.value
        assert got[item.key] == Entry(value, None, item.metadata)


async def test_exactly_the_unsuccessful_keys_are_sent_again(
    faulty_server: Callable[[Faults], Service], api_token: str
) -> None:
    service = faulty_server(Faults(bulk_failure_rate=0.3, seed=1))
    recording = Recording()
    async with rest_client(service.url, api_token, "ns", transport=recording) as kv:
        result = await kv.put_many([PutItem(f"k{i}", b"v") for i in range(500)])
    assert result.ok
    bulk = [(req, body) for req, body in recording.sent if req.url.path.endswith("/bulk")]
    assert len(bulk) >= 2
    answers = [r for r in recording.answers if r.request.url.path.endswith("/bulk")]
    for (_, body), answer, (_, retry_body) in zip(bulk, answers, bulk[1:], strict=False):
        unsuccessful = answer.json()["result"]["unsuccessful_keys"]
        assert sorted(item["key"] for item in json.loads(retry_body)) == sorted(unsuccessful)
        assert set(unsuccessful) <= {item["key"] for item in json.loads(body)}
    assert answers[-1].json()["result"]["unsuccessful_keys"] == []


async def test_bulk_writes_are_split_by_count_and_by_bytes(
    kv_server: Service, api_token: str
) -> None:
    recording = Recording()
    items = [PutItem(f"k{i:04d}", b"x" * (10 + i % 300)) for i in range(1_000)]
    async with rest_client(
        kv_server.url,
        api_token,
        "split",
        transport=recording,
        bulk_max_items=100,
        bulk_max_bytes=8_000,
    ) as kv:
        assert (await kv.put_many(items)).ok
        got = await kv.get_many([i.key for i in items])
    bodies = [body for req, body in recording.sent if req.url.path.endswith("/bulk")]
    assert all(len(body) <= 8_000 for body in bodies)
    counts = [len(json.loads(body)) for body in bodies]
    assert max(counts) <= 100
    assert sum(counts) == 1_000
    assert len(bodies) > 10  # the byte limit, not only the count, split it
    assert all(got[i.key] == Entry(i.value) for i in items)  # type: ignore[arg-type]


async def test_retry_after_is_honoured(kv_server: Service, api_token: str) -> None:
    def first_is_429(request: httpx.Request, n: int) -> httpx.Response | None:
        if n == 1:
            return httpx.Response(
                429,
                headers={"Retry-After": "0.25"},
                json={"success": False, "errors": [{"code": 10048, "message": "slow down"}]},
            )
        return None

    waits: list[float] = []

    def hook(details: RetryDetails) -> None:
        waits.append(details.wait_for)

    set_on_retry_hooks([hook])
    try:
        with stamina.set_testing(False):
            async with rest_client(
                kv_server.url, api_token, "ra", transport=Recording(first_is_429)
            ) as kv:
                await kv.put("k", b"v")
                assert await kv.get("k") == Entry(b"v")
    finally:
        set_on_retry_hooks(None)
    assert len(waits) == 1
    assert 0.25 <= waits[0] <= 0.25 * 1.1  # Retry-After plus at most 10 % jitter


async def test_timeouts_and_slow_answers_are_retried(
    faulty_server: Callable[[Faults], Service], api_token: str
) -> None:
    service = faulty_server(Faults(slow_rate=0.3, slow_seconds=1.0, seed=3))
    async with rest_client(service.url, api_token, "slow", timeout=0.3) as kv:
        await asyncio.gather(*(kv.put(f"k{i}", f"v{i}") for i in range(20)))
        got = await kv.get_many([f"k{i}" for i in range(20)])
    assert all(got[f"k{i}"] == Entry(f"v{i}".encode()) for i in range(20))


async def test_a_refused_token_is_not_retried(kv_server: Service) -> None:
    recording = Recording()
    async with rest_client(kv_server.url, "wrong-token", "ns", transport=recording) as kv:
        with pytest.raises(AuthenticationError) as caught:
            await kv.get("k")
    assert caught.value.status == 401
    assert len(recording.sent) == 1


async def test_a_dead_server_gives_a_transport_error_after_retries(api_token: str) -> None:
    from brainbot.kv import KVTransportError
    from tests.support.processes import free_port

    async with rest_client(
        f"http://127.0.0.1:{free_port()}/client/v4", api_token, "ns", retry=RetryPolicy(attempts=3)
    ) as kv:
        with pytest.raises(KVTransportError, match="ConnectError"):
            await kv.get("k")


async def test_control_bytes_travel_as_base64_so_big_values_fit_a_bulk(
    kv_server: Service, api_token: str
) -> None:
    """JSON escapes a control byte to six characters: a 25 MiB value of them would be a
    150 MB request, so such values travel as base64 instead."""
    recording = Recording()
    value = b"\x01" * (25 * 1024 * 1024)
    async with rest_client(kv_server.url, api_token, "ctl", transport=recording) as kv:
        result = await kv.put_many([PutItem("ctl", value), PutItem("text", "plain é")])
        assert result.ok
        assert (await kv.get("ctl")) == Entry(value)
    body = json.loads(next(b for r, b in recording.sent if r.url.path.endswith("/bulk")))
    assert body[0]["base64"] is True
    assert "base64" not in body[1]


async def test_an_item_too_big_for_any_request_is_refused_before_anything_is_sent(
    kv_server: Service, api_token: str
) -> None:
    from brainbot.kv import BulkTooLarge

    recording = Recording()
    async with rest_client(
        kv_server.url, api_token, "big", transport=recording, bulk_max_bytes=2_000
    ) as kv:
        items = [PutItem(f"k{i}", b"v") for i in range(200)] + [PutItem("huge", "é" * 1500)]
        with pytest.raises(BulkTooLarge):
            await kv.put_many(items)
    assert recording.sent == []


async def test_a_batch_that_keeps_failing_is_reported_per_key_not_raised(
    kv_server: Service, api_token: str
) -> None:
    """The second of three batches meets a dead service: the first stays reported as
    written, the rest as unsuccessful."""

    def second_batch_fails(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.url.path.endswith("/bulk") and b'"k100"' in request.content:
            return httpx.Response(
                503, json={"success": False, "errors": [{"code": 10001, "message": "down"}]}
            )
        return None

    async with rest_client(
        kv_server.url,
        api_token,
        "halfway",
        transport=Recording(second_batch_fails),
        bulk_max_items=100,
        retry=RetryPolicy(attempts=2),
    ) as kv:
        result = await kv.put_many([PutItem(f"k{i}", b"v") for i in range(300)])
        assert result.successful_key_count == 100
        assert result.unsuccessful_keys == tuple(f"k{i}" for i in range(100, 300))
        got = await kv.get_many(["k0", "k99", "k100"])
    assert got["k0"] == Entry(b"v")
    assert got["k100"] is None


async def test_a_key_written_twice_in_a_second_is_retried_until_accepted(
    faulty_server: Callable[[Faults], Service], api_token: str
) -> None:
    """With Cloudflare's 1 write/s per key simulated, the client's retries (honouring
    Retry-After: 1) land the second write: the last value wins, nothing is lost."""
    service = faulty_server(Faults(key_write_limit=True))
    recording = Recording()
    with stamina.set_testing(False):  # the Retry-After of 1 s must really be waited out
        async with rest_client(service.url, api_token, "hot", transport=recording) as kv:
            await kv.put("hot", b"first")
            await kv.put("hot", b"second")
            assert await kv.get("hot") == Entry(b"second")
    statuses = [r.status_code for r in recording.answers if r.request.method == "PUT"]
    assert statuses[0] == 200
    assert 429 in statuses
    assert statuses[-1] == 200


async def test_live_traffic_fails_fast_on_a_long_retry_after(
    tmp_path: Path, api_token: str
) -> None:
    """A live client does not wait out Cloudflare's 5-minute lockout: it raises
    BudgetExhausted at once with the Retry-After, for the service's 503."""
    import time

    from brainbot.errors import BudgetExhausted

    faults = Faults(error_rate=1.0, error_429_share=1.0, retry_after=300.0)
    service = start_kv_server(tmp_path / "srv", api_token, *fault_args(faults))
    try:
        async with rest_client(service.url, api_token, "live", live=True, budget_wait=1.0) as kv:
            started = time.monotonic()
            with pytest.raises(BudgetExhausted) as caught:
                await kv.get("k")
            assert time.monotonic() - started < 5
            assert caught.value.retry_after == 300.0
    finally:
        service.stop()
