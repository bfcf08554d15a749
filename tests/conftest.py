"""Session-wide real services: redis-server, the local KV API server, Miniflare."""

from __future__ import annotations

import gc
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import stamina
import stamina.instrumentation

from tests.support.processes import ROOT, Service, start_kv_server, start_redis, start_service

MINIFLARE_DIR = ROOT / "workers" / "kv-rest-sim"


def _require_miniflare() -> None:
    """Skip without Node.js; fail when Node is there but the Workers' npm install is not."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: run ./scripts/setup")
    if not (ROOT / "workers" / "node_modules" / "miniflare").is_dir():
        pytest.fail("Miniflare is not installed: run ./scripts/setup (npm ci in workers/)")


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    """Retries keep their count (capped at 30) but skip their sleeps (stamina's test mode)."""
    with stamina.set_testing(True, attempts=30, cap=True):
        yield


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """The bulk commands tune the garbage collector for their process; run in-process by
    a test, that must not carry over to the tests after it."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)


@pytest.fixture(autouse=True)
def _retry_hooks_as_found() -> Iterator[None]:
    """Every command installs its retry log (``kv.rest.log_retry``); run in-process by a
    test, that must not carry over to the tests after it either."""
    yield
    stamina.instrumentation.set_on_retry_hooks(None)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    service.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's redis-server, its database emptied before and after."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session")
def api_token() -> str:
    return "test-token-" + secrets.token_hex(16)


@pytest.fixture(scope="session")
def kv_server(tmp_path_factory: pytest.TempPathFactory, api_token: str) -> Iterator[Service]:
    """`brainbot kv serve` with a test clock and no faults, shared by the session."""
    service = start_kv_server(tmp_path_factory.mktemp("kv-serve"), api_token, "--test-clock")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kv_server_realtime(
    tmp_path_factory: pytest.TempPathFactory, api_token: str
) -> Iterator[Service]:
    """`brainbot kv serve` on the real clock, for layers that keep time themselves."""
    service = start_kv_server(tmp_path_factory.mktemp("kv-serve-rt"), api_token)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def miniflare(api_token: str) -> Iterator[Service]:
    """Cloudflare's own simulator (Miniflare/workerd) running our REST-paths Worker."""
    _require_miniflare()
    service = start_service(
        ["node", "serve.mjs", "--port", "0", "--test-clock"],
        r"^READY (\S+)$",
        env={"KV_SIM_TOKEN": api_token},
        cwd=MINIFLARE_DIR,
    )
    yield service
    service.stop()


GATEWAY_DIR = ROOT / "workers" / "kv-gateway"


@pytest.fixture(scope="session")
def gateway_secret() -> str:
    return "gateway-secret-" + secrets.token_hex(16)


def start_gateway(secret: str, *args: str) -> Service:
    """Our gateway Worker inside Miniflare (Cloudflare's workerd and KV simulator)."""
    _require_miniflare()
    return start_service(
        ["node", "serve.mjs", "--port", "0", *args],
        r"^READY (\S+)$",
        env={"KV_GATEWAY_SECRET": secret},
        cwd=GATEWAY_DIR,
    )


@pytest.fixture(scope="session")
def gateway(gateway_secret: str) -> Iterator[Service]:
    service = start_gateway(gateway_secret, "--test-clock")
    yield service
    service.stop()


@pytest.fixture
def own_gateway(gateway_secret: str) -> Iterator[Service]:
    """A gateway of its own, for a test that may break its coordinator."""
    service = start_gateway(gateway_secret)
    yield service
    service.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
