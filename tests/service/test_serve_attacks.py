"""More of `brainbot serve` tried as a hostile client would: floods that cost KV requests,
sessions across instances, and races between a logout and the requests still running.
Real processes over real HTTP, or the service on a real store with a fault injected."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.kv import server_stats
from tests.support.processes import Service, start_kv_server
from tests.support.service import bot_env, login, start_bot


@pytest.fixture
def two_instances_on_rest(tmp_path: Path, api_token: str) -> Iterator[tuple[Service, Service, str]]:
    """Two `brainbot serve` instances on one namespace of `brainbot kv serve` (whose
    request counts tell what the service spent), and that server's url."""
    server = start_kv_server(tmp_path / "kv-serve", api_token)
    env = bot_env(
        tmp_path / "data",
        CLOUDFLARE_ACCOUNT_ID="test-account",
        CLOUDFLARE_KV_NAMESPACE_ID="live",
        CLOUDFLARE_KV_API_TOKEN=api_token,
        CLOUDFLARE_API_BASE_URL=server.url,
        BRAINBOT_KV_SINGLE_WRITER="1",  # sessions only: no read-modify-write across them
        BRAINBOT_RATE_READS="3/minute",
    )
    first, second = start_bot(env), start_bot(env)
    yield first, second, server.url
    first.stop()
    second.stop()
    server.stop()


def test_a_flood_with_one_genuine_session_id_costs_no_kv_requests(
    two_instances_on_rest: tuple[Service, Service, str], api_token: str
) -> None:
    """Every request read its session from KV before any limit was applied: 30 requests
    of a user over the read limit cost 30 session reads (all answered 429), and 30 with a
    session logged out cost 30 (all 401). One user could spend the API budget of all."""
    first, second, kv_url = two_instances_on_rest

    def spent() -> int:
        return int(asyncio.run(server_stats(kv_url, api_token))["requests"])  # type: ignore[call-overload]

    with (
        httpx.Client(base_url=first.url, timeout=30) as one,
        httpx.Client(base_url=second.url, timeout=30) as other,
    ):
        alice = login(one, "alice")  # the session comes from the first instance
        before = spent()
        codes = [other.get("/conversations", headers=alice).status_code for _ in range(30)]
        assert codes == [200] * 3 + [429] * 27
        assert spent() - before <= 6  # 3 session reads and 3 lists; was 33

        bob = login(one, "bob")
        assert one.delete("/sessions", headers=bob).status_code == 204
        before = spent()
        codes = [other.get("/conversations", headers=bob).status_code for _ in range(30)]
        assert codes == [401] * 30
        assert spent() - before <= 1  # found dead once; was 30
