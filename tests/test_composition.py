"""The composition root: settings become objects in one place, the store's KV rules follow
the namespace actually opened, and one API budget serves every namespace of a token."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from brainbot.composition import load_settings, open_namespace, open_store, request_budget
from brainbot.config import Settings
from brainbot.errors import ConfigError
from brainbot.kv import CloudflareKV, EmbeddedKV, GatewayKV, ReadYourWrites
from brainbot.kv.faults import Faults
from brainbot.storage import KVStore
from tests.support.kv import fault_args, server_stats
from tests.support.processes import Service, start_kv_server


def settings(tmp_path: Path, **env: object) -> Settings:
    return Settings(BRAINBOT_DATA_DIR=tmp_path / "data", **env)  # type: ignore[arg-type]


def kv_store(store: object) -> KVStore:
    assert isinstance(store, KVStore)
    return store


async def test_a_gateway_only_deployment_gets_cloudflares_rules(tmp_path: Path) -> None:
    """Bug 1: with only the gateway configured, the store ran with no write spacing and no
    read-your-writes, because the rules came from the CLOUDFLARE_* flags."""
    store = kv_store(
        open_store(
            settings(
                tmp_path,
                BRAINBOT_KV_GATEWAY_URL="http://127.0.0.1:9/",
                BRAINBOT_KV_GATEWAY_SECRET="s" * 32,
            )
        )
    )
    assert isinstance(store.namespace, ReadYourWrites)
    assert isinstance(store.namespace.inner, GatewayKV)
    # its Durable Object writes KV at most once a second per key, coalescing: the store
    # need not space its own writes (it did, 1 s, before the coordinator)
    assert store.namespace.coordinated
    assert store.write_interval == 0.0
    assert store.recent_window == 60.0  # a process reads its own writes while KV lags
    await store.aclose()


async def test_the_embedded_kv_gets_its_own_rules_and_settings_still_win(
    tmp_path: Path,
) -> None:
    store = kv_store(open_store(settings(tmp_path)))
    assert isinstance(store.namespace, EmbeddedKV)
    assert (store.write_interval, store.recent_window) == (0.0, 0.0)
    await store.aclose()
    store = kv_store(
        open_store(
            settings(
                tmp_path,
                BRAINBOT_KV_GATEWAY_URL="http://127.0.0.1:9/",
                BRAINBOT_KV_GATEWAY_SECRET="s" * 32,
                BRAINBOT_KV_KEY_WRITE_INTERVAL=0,
                BRAINBOT_KV_READ_OWN_WRITES_WINDOW=5,
            )
        )
    )
    assert (store.write_interval, store.recent_window) == (0.0, 5.0)
    await store.aclose()


def cloudflare(tmp_path: Path, url: str, token: str, **env: object) -> Settings:
    return settings(
        tmp_path,
        CLOUDFLARE_ACCOUNT_ID="test-account",
        CLOUDFLARE_KV_NAMESPACE_ID="ns",
        CLOUDFLARE_KV_API_TOKEN=token,
        CLOUDFLARE_API_BASE_URL=url,
        **env,
    )


async def test_every_namespace_of_one_token_shares_one_budget(tmp_path: Path) -> None:
    """Bug 2: each namespace opened got its own 1,200-per-5-minutes allowance."""
    config = cloudflare(tmp_path, "http://127.0.0.1:9/client/v4", "token-a")
    first, second = open_namespace(config, purpose="bulk"), open_namespace(config, purpose="live")
    assert isinstance(first, CloudflareKV)
    assert isinstance(second, CloudflareKV)
    assert first.budget is second.budget is request_budget(config, "token-a")
    other = open_namespace(cloudflare(tmp_path, "http://127.0.0.1:9/client/v4", "token-b"))
    assert isinstance(other, CloudflareKV)
    assert other.budget is not first.budget  # another token, another user's allowance
    for kv in (first, second, other):
        await kv.aclose()


@pytest.fixture
def budgeted_server(tmp_path: Path, api_token: str) -> Service:
    """`kv serve` that locks a client out, as Cloudflare does, past 4 requests in 2 s."""
    service = start_kv_server(
        tmp_path / "srv", api_token, *fault_args(Faults(budget=4, budget_window=2.0))
    )
    yield service  # type: ignore[misc]
    service.stop()


def test_migrate_and_its_verify_stay_within_one_budget(
    budgeted_server: Service, api_token: str, redis_url: str, tmp_path: Path
) -> None:
    """`brainbot migrate` writes in bulk requests (small ones here), then its verify lists
    and samples: with one budget for both, the server never counts more than the budget in
    a window."""

    async def fill() -> None:
        async with aioredis.Redis.from_url(redis_url) as redis:
            await redis.flushdb()
            await redis.mset({f"k{i}": i for i in range(40)})

    asyncio.run(fill())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "BRAINBOT_"))},
        "BRAINBOT_DATA_DIR": str(tmp_path / "data"),
        "CLOUDFLARE_ACCOUNT_ID": "test-account",
        "CLOUDFLARE_KV_NAMESPACE_ID": "budgeted",
        "CLOUDFLARE_KV_API_TOKEN": api_token,
        "CLOUDFLARE_API_BASE_URL": budgeted_server.url,
        "CLOUDFLARE_API_BUDGET": "4",
        "CLOUDFLARE_API_BUDGET_WINDOW": "2",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brainbot",
            "migrate",
            "--source",
            redis_url,
            "--batch-entries",
            "5",
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    stats = asyncio.run(server_stats(budgeted_server.url, api_token))
    assert stats["requests"] > 4  # the run needed more than one window's worth
    assert stats["budget_rejections"] == 0  # and never went over, so never locked out


def test_invalid_settings_are_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BRAINBOT_STORAGE_BACKEND") as caught:
        load_settings(BRAINBOT_STORAGE_BACKEND="memcached", BRAINBOT_DATA_DIR=tmp_path)
    assert "memcached" not in str(caught.value)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"CLOUDFLARE_API_BASE_URL": "http://[::1"}, "CLOUDFLARE_API_BASE_URL"),
        ({"CLOUDFLARE_API_BASE_URL": "api.example.com/v4"}, "CLOUDFLARE_API_BASE_URL"),
        ({"CLOUDFLARE_API_BASE_URL": "http://api.example.com"}, "CLOUDFLARE_API_BASE_URL"),
        ({"BRAINBOT_KV_GATEWAY_URL": "http://[::1"}, "BRAINBOT_KV_GATEWAY_URL"),
        ({"BRAINBOT_KV_GATEWAY_URL": "http://gw.example.com"}, "BRAINBOT_KV_GATEWAY_URL"),
        ({"BRAINBOT_KV_GATEWAY_SECRET": ""}, "BRAINBOT_KV_GATEWAY_SECRET"),
    ],
)
def test_a_client_refusing_its_settings_is_a_config_error(
    tmp_path: Path, values: dict[str, str], named: str
) -> None:
    """Measured: these raised httpx.InvalidURL or ValueError, a traceback on the console."""
    base = {
        "BRAINBOT_DATA_DIR": tmp_path,
        "CLOUDFLARE_ACCOUNT_ID": "acc",
        "CLOUDFLARE_KV_NAMESPACE_ID": "ns",
        "CLOUDFLARE_KV_API_TOKEN": "token",
    }
    if "CLOUDFLARE_API_BASE_URL" not in values:
        base |= {
            "BRAINBOT_KV_GATEWAY_URL": "https://gw.example.com",
            "BRAINBOT_KV_GATEWAY_SECRET": "s",
        }
    with pytest.raises(ConfigError, match=named):
        open_namespace(load_settings(**(base | values)))
