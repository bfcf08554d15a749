"""The rollback switch: one factory, three backends (kv, dual, redis), and the dual mode's
promise that Redis receives every write, so switching back loses nothing."""

from __future__ import annotations

import logging
import subprocess
import tomllib
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from brainbot.composition import open_store
from brainbot.config import Settings
from brainbot.errors import ConfigError
from brainbot.kv import EmbeddedKV
from brainbot.storage import DualStore, KVStore, RedisBackend
from tests.support.processes import ROOT


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings(BRAINBOT_DATA_DIR=tmp_path / "data", **env)  # type: ignore[arg-type]


async def test_default_backend_is_kv_on_the_embedded_namespace(tmp_path: Path) -> None:
    store = open_store(settings(tmp_path))
    assert isinstance(store, KVStore)
    assert isinstance(store.namespace, EmbeddedKV)
    async with store:
        await store.set("k", "v")
        assert await store.get("k") == b"v"
    assert (tmp_path / "data" / "kv" / "brainbot.sqlite3").exists()


def test_redis_backends_need_a_url_and_say_so(tmp_path: Path) -> None:
    for backend in ("redis", "dual"):
        with pytest.raises(ConfigError, match="BRAINBOT_REDIS_URL"):
            open_store(settings(tmp_path, BRAINBOT_STORAGE_BACKEND=backend))


def test_an_unknown_backend_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"storage_backend|BRAINBOT_STORAGE_BACKEND"):
        settings(tmp_path, BRAINBOT_STORAGE_BACKEND="memcached")


async def test_redis_backend_is_redis(tmp_path: Path, redis_url: str) -> None:
    store = open_store(
        settings(tmp_path, BRAINBOT_STORAGE_BACKEND="redis", BRAINBOT_REDIS_URL=redis_url)
    )
    assert isinstance(store, RedisBackend)
    assert isinstance(store.client, aioredis.Redis)  # redis-py's own client underneath
    await store.set("rollback", "ok")
    assert await store.get("rollback") == b"ok"
    await store.flushdb()
    await store.aclose()


async def test_dual_writes_both_compares_reads_and_switching_back_loses_nothing(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"BRAINBOT_STORAGE_BACKEND": "dual", "BRAINBOT_REDIS_URL": redis_url}
    dual = open_store(settings(tmp_path, **env))
    assert isinstance(dual, DualStore)
    await dual.redis.flushdb()
    await dual.set("session:1", "alice", ex=3600)
    await dual.rpush("history:1", "hi", "there")
    await dual.hset("user:1", mapping={"name": "Alice", "turns": 2})
    await dual.incr("turns")
    assert await dual.get("session:1") == b"alice"
    assert await dual.lrange("history:1", 0, -1) == [b"hi", b"there"]
    assert await dual.hgetall("user:1") == {b"name": b"Alice", b"turns": b"2"}
    await dual.drain()
    assert dual.compared >= 7
    assert sum(dual.mismatches.values()) == 0

    # Someone changes Redis behind the store's back: the next read is flagged, by key only.
    await dual.redis.set("session:1", "mallory", keepttl=True)
    caplog.set_level(logging.WARNING, logger="brainbot.storage.dual")
    assert await dual.get("session:1") == b"alice"  # reads come from KV
    await dual.drain()
    assert dual.mismatches["get"] == 1
    assert "session:1" in caplog.text
    assert "mallory" not in caplog.text
    await dual.redis.set("session:1", "alice", keepttl=True)
    await dual.aclose()

    # Roll back: Redis alone has every write made during the cut-over.
    rolled_back = open_store(
        settings(tmp_path, BRAINBOT_STORAGE_BACKEND="redis", BRAINBOT_REDIS_URL=redis_url)
    )
    assert await rolled_back.get("session:1") == b"alice"
    assert 3500 < await rolled_back.ttl("session:1") <= 3600
    assert await rolled_back.lrange("history:1", 0, -1) == [b"hi", b"there"]
    assert await rolled_back.get("turns") == b"1"
    await rolled_back.flushdb()
    await rolled_back.aclose()


async def test_dual_fails_a_write_that_redis_refuses(tmp_path: Path, redis_url: str) -> None:
    dual = DualStore(
        KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0),
        aioredis.Redis.from_url(redis_url),
    )
    await dual.redis.flushdb()
    await dual.redis.rpush("k", "list in redis only")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await dual.set("k", "v", get=True)  # KV took it (no key there); Redis refused
    await dual.redis.flushdb()
    await dual.aclose()


def test_no_redis_store_left_and_redis_is_not_a_core_dependency() -> None:
    found = subprocess.run(
        ["grep", "-rIl", "redis_store", str(ROOT / "src")], capture_output=True, text=True
    )
    assert found.stdout == ""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith(("redis", "upstash"))]
    assert any(d.startswith("redis") for d in project["optional-dependencies"]["redis"])


async def test_dual_keeps_both_sides_in_the_same_order_under_concurrency(
    tmp_path: Path, redis_url: str
) -> None:
    import asyncio

    dual = DualStore(
        KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0),
        aioredis.Redis.from_url(redis_url),
    )
    await dual.redis.flushdb()
    await dual.redis.set("other-app:key", "precious")

    async def handler(i: int) -> None:
        await dual.incr("counter")
        await dual.get("counter")
        await dual.rpush("log", i)
        await dual.llen("log")
        await dual.set("last", i)

    await asyncio.gather(*(handler(i) for i in range(40)))
    await dual.drain()
    assert sum(dual.mismatches.values()) == 0
    assert await dual.kv.get("last") == await dual.redis.get("last")
    assert await dual.kv.lrange("log", 0, -1) == await dual.redis.lrange("log", 0, -1)
    await dual.flushdb()
    assert await dual.redis.get("other-app:key") == b"precious"  # only brainbot's keys went
    assert await dual.redis.exists("counter", "log", "last") == 0
    await dual.redis.flushdb()
    await dual.aclose()


async def test_dual_mirrors_what_kv_chose_and_does_not_compare_random_answers(
    tmp_path: Path, redis_url: str
) -> None:
    """SPOP pops members KV chose: Redis gets the same set, by value; random reads and KV's
    own cursors are not counted as mismatches."""
    dual = DualStore(
        KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0),
        aioredis.Redis.from_url(redis_url),
    )
    await dual.redis.flushdb()
    await dual.sadd("pool", *range(50))
    await dual.expire("pool", 600)
    popped = await dual.spop("pool", 10)
    assert len(popped) == 10
    assert await dual.kv.smembers("pool") == await dual.redis.smembers("pool")
    assert 590 <= await dual.redis.ttl("pool") <= 600
    await dual.srandmember("pool", 3)
    await dual.scan(0, count=10)
    await dual.randomkey()
    await dual.hset(bytearray(b"h"), "f", "v")  # a bytearray key: one key, as bytes
    await dual.drain()
    assert sum(dual.mismatches.values()) == 0
    assert await dual.redis.hget("h", "f") == b"v"
    await dual.redis.flushdb()
    await dual.aclose()
