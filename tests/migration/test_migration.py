"""The Redis -> KV migration against a real redis-server: every type and edge, dry run,
faults of the local KV server, kill -9 and resume, rollback, a rediss:// (TLS) source."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from brainbot.config import Settings
from brainbot.kv import BulkResult, EmbeddedKV, PutItem, iter_keys
from brainbot.kv.faults import Faults
from brainbot.migration.transform import Options
from brainbot.storage import KVStore
from brainbot.storage.conversations import ConversationStore
from tests.support.kv import fault_args, rest_client
from tests.support.migration import migrate, roll_back, settings_for, verify_kv
from tests.support.processes import free_port, start_kv_server, start_service


async def fill(r: aioredis.Redis, *, conversations: int = 3, generic: int = 50) -> None:
    """Realistic legacy brainbot data plus every edge the migration must handle."""
    await r.set("counter:messages", 42)
    await r.set("cache:bin", bytes(range(256)), ex=3600)
    await r.set("cache:é🙂 key with space/and?#%", "unicode value ✓", px=7_200_000)
    await r.set("almost-gone", "x", px=30_000)  # under KV's 60 s floor
    await r.set("big", os.urandom(1024 * 1024))
    await r.set("k" * 512, "longest legal name")
    await r.set("k" * 513, "too long for KV")
    await r.set(b"\xff\xfe-not-utf8", "binary name")
    await r.set("empty", b"")
    await r.rpush("queue", "a", b"\x00\xff", "ü")
    await r.hset("user:1", mapping={"name": "Alice", b"\xff": b"\x00", "n": 1})
    await r.sadd("tags", "x", "y", b"\xfe")
    await r.zadd("leaderboard", {"a": 1.5, "b": -2, "c": float("inf")})
    await r.xadd("events", {"a": "1"})
    for c in range(conversations):
        await r.rpush(
            f"conversation:c{c}",
            *[
                json.dumps(
                    {
                        "role": "user" if i % 2 == 0 else "assistant",
                        "content": f"c{c} m{i} é",
                        "timestamp": 1_700_000_000 + i,
                    }
                )
                for i in range(20)
            ],
        )
    await r.expire("conversation:c0", 86_400)
    await r.rpush("conversation:not-legacy", "plain text")
    await r.set(
        "session:legacy-session-id-0001",
        json.dumps({"user": "alice", "conversation": "c1", "turns": 3}),
        ex=1800,
    )
    await r.sadd("user:bob:conversations", "c0", "c2")  # the old bot's owner set
    for i in range(generic):
        await r.set(f"g:{i:04d}", f"value {i}")


async def test_every_type_and_edge_arrives_as_the_new_code_reads_it(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await fill(source)
    settings = settings_for(tmp_path)
    report = await migrate(redis_url, settings)
    assert report.verify_differences == 0
    assert report.skipped == {
        "key refused by KV: UTF-8 encoded length of 513 exceeds key length limit of 512.": 1,
        "key is not UTF-8 (KV keys are text)": 1,
        "unsupported type: stream": 1,
    }
    assert report.notes["under 60 s left: clamped"] == 1
    assert report.migrated["list/conversation"] == 3
    async with KVStore(EmbeddedKV(settings.embedded_kv_path), write_interval=0) as kv:
        for key in [
            "counter:messages",
            "cache:bin",
            "cache:é🙂 key with space/and?#%",
            "big",
            "k" * 512,
            "empty",
            "almost-gone",
        ]:
            assert await kv.get(key) == await source.get(key), key
        assert await kv.lrange("queue", 0, -1) == await source.lrange("queue", 0, -1)
        assert await kv.hgetall("user:1") == await source.hgetall("user:1")
        assert await kv.smembers("tags") == await source.smembers("tags")
        assert await kv.zrange("leaderboard", 0, -1, withscores=True) == await source.zrange(
            "leaderboard", 0, -1, withscores=True
        )
        assert await kv.lrange("conversation:not-legacy", 0, -1) == [b"plain text"]
        assert abs(await kv.ttl("cache:bin") - await source.ttl("cache:bin")) <= 2
        assert abs(await kv.pttl("almost-gone") - await source.pttl("almost-gone")) <= 2000
        assert await kv.ttl("counter:messages") == -1
        history = await ConversationStore(kv).history("c1", limit=100)
        assert [(m.role, m.content) for m in history] == [
            ("user" if i % 2 == 0 else "assistant", f"c1 m{i} é") for i in range(20)
        ]
        # legacy sessions are not bearer tokens any more (log in again); their owner stays
        assert await kv.keys("session:*") == []
        conversations = ConversationStore(kv)
        assert await conversations.owns("c1", "alice")
        assert not await conversations.owns("c0", "alice")
        assert await conversations.owns("c0", "bob")  # from bob's legacy owner set
        assert await conversations.owns("c2", "bob")
    run_dir = settings.data_dir / "migrations" / report.run_id
    manifest = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert {m["key"] for m in manifest} >= {"queue", "user:1", "conversation:c0"}
    assert "legacy-session-id-0001" not in (run_dir / "manifest.jsonl").read_text()
    per_key = [m for m in manifest if m["kind"] != "owners"]  # the owners' entries: one line
    assert all(set(m) >= {"key", "type", "size", "ttl_ms", "kv", "run"} for m in per_key)
    assert "value" not in (run_dir / "manifest.jsonl").read_text()
    assert oct((run_dir / "backup.jsonl.gz").stat().st_mode & 0o777) == "0o600"


async def test_running_twice_is_harmless(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await fill(source, generic=5)
    settings = settings_for(tmp_path)
    await migrate(redis_url, settings)
    first = [k.name async for k in iter_keys(EmbeddedKV(settings.embedded_kv_path))]
    again = await migrate(redis_url, settings)
    assert again.verify_differences == 0
    assert [k.name async for k in iter_keys(EmbeddedKV(settings.embedded_kv_path))] == first


class RecordingKV(EmbeddedKV):
    """The embedded KV, remembering the size of each bulk write (an observer, not a mock)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.bulk_writes: list[int] = []

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        self.bulk_writes.append(len(items))
        return await super().put_many(items)


async def test_bulk_writes_are_full_and_never_split(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await fill(source, generic=2000)
    settings = settings_for(tmp_path)
    kv = RecordingKV(settings.embedded_kv_path)
    report = await migrate(redis_url, settings, namespace=kv, batch_entries=500, scan_count=50)
    assert report.verify_differences == 0
    assert sum(kv.bulk_writes) == report.kv_entries
    # one bulk request each (a step never pushes a batch past it), and nearly full: steps
    # of about 50 keys leave at most a step's worth of room
    assert max(kv.bulk_writes) <= 500
    assert len(kv.bulk_writes) <= -(-report.kv_entries // 250)
    await kv.aclose()


async def test_dry_run_plans_and_writes_nothing(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await fill(source, generic=10)
    settings = settings_for(tmp_path)
    report = await migrate(redis_url, settings, dry_run=True)
    assert report.keys_seen == await source.dbsize()
    assert report.kv_entries > 0
    assert (
        not settings.embedded_kv_path.exists()
        or [k async for k in iter_keys(EmbeddedKV(settings.embedded_kv_path))] == []
    )
    assert not (settings.data_dir / "migrations").exists()


async def test_skip_policy_for_short_ttls(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    from brainbot.migration import Options

    await source.set("brief", "x", px=10_000)
    await source.set("long", "y", ex=600)
    report = await migrate(redis_url, settings_for(tmp_path), options=Options(short_ttl="skip"))
    assert report.skipped == {"under 60 s left (policy: skip)": 1}
    assert report.migrated == {"string/generic": 1}


async def test_zero_differences_through_429s_5xx_partial_bulks_and_slow_answers(
    source: aioredis.Redis, redis_url: str, tmp_path: Path, api_token: str
) -> None:
    await fill(source, generic=3000)
    faults = Faults(
        error_rate=0.3,
        retry_after=0.01,
        bulk_failure_rate=0.2,
        slow_rate=0.1,
        slow_seconds=0.05,
        seed=11,
    )
    service = start_kv_server(tmp_path / "srv", api_token, *fault_args(faults))
    try:
        async with rest_client(service.url, api_token, "migration", bulk_max_items=500) as kv:
            report = await migrate(redis_url, settings_for(tmp_path), namespace=kv, scan_count=200)
            assert report.verify_differences == 0
            assert report.api_requests > 0
            clean = await verify_kv(redis_url, settings_for(tmp_path), namespace=kv)
            assert clean.differences == []
            # SCAN may return a key twice (while Redis rehashes): at least every key once
            assert clean.checked >= await source.dbsize() - sum(report.skipped.values())
    finally:
        service.stop()


MIGRATE = [
    sys.executable,
    "-m",
    "brainbot",
    "migrate",
    "--scan-count",
    "50",
    "--batch-entries",
    "300",
    "--no-verify",
]


def test_kill_9_at_random_moments_then_resume(redis_url: str, tmp_path: Path) -> None:
    async def prepare() -> None:
        r = aioredis.Redis.from_url(redis_url)
        await r.flushdb()
        await fill(r, conversations=60, generic=4000)
        await r.aclose()

    asyncio.run(prepare())
    env = {**os.environ, "BRAINBOT_DATA_DIR": str(tmp_path / "data")}
    rng = random.Random(7)
    for attempt in range(3):
        process = subprocess.Popen(
            [*MIGRATE, "--source", redis_url, *(["--resume"] if attempt else [])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(0.8 + rng.random() * 1.5)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = subprocess.run(
        [*MIGRATE, "--source", redis_url, "--resume"], env=env, capture_output=True, timeout=600
    )
    if b"Nothing to resume" in done.stderr:  # an attempt already finished the run
        done = subprocess.run(
            [*MIGRATE, "--source", redis_url], env=env, capture_output=True, timeout=600
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    async def check() -> None:
        settings = Settings(BRAINBOT_DATA_DIR=tmp_path / "data")  # type: ignore[call-arg]
        report = await verify_kv(redis_url, settings)
        assert report.differences == []
        async with KVStore(EmbeddedKV(settings.embedded_kv_path), write_interval=0) as kv:
            for c in range(60):  # every message once, in order: no duplicates from re-done batches
                messages = await ConversationStore(kv).history(f"c{c}", limit=1000)
                assert [m.content for m in messages] == [f"c{c} m{i} é" for i in range(20)]

    asyncio.run(check())


async def test_rollback_restores_the_source_and_removes_exactly_the_runs_keys(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await fill(source, generic=20)
    settings = settings_for(tmp_path)
    before = await dump(source)
    report = await migrate(redis_url, settings)
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        await kv.put("written-by-someone-else", b"keep me")
    await source.flushdb()  # disaster on the Redis side
    result = await roll_back(report.run_id, settings, delete_kv=True, restore_to=redis_url)
    assert result.redis_restored == len(
        [k for k in before if k != b"events"]
    )  # streams are not migrated
    after = await dump(source)
    assert {k: v[:2] for k, v in after.items()} == {
        k: v[:2] for k, v in before.items() if k != b"events"
    }
    for key, (_, _, ttl) in after.items():
        assert abs(ttl - before[key][2]) <= 5_000 or ttl == before[key][2] == -1
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        assert [k.name async for k in iter_keys(kv)] == ["written-by-someone-else"]


async def dump(r: aioredis.Redis) -> dict[bytes, tuple[str, Any, int]]:
    state = {}
    async for key in r.scan_iter():
        kind = (await r.type(key)).decode()
        reader: Any = {
            "string": r.get,
            "list": lambda k: r.lrange(k, 0, -1),
            "hash": r.hgetall,
            "set": r.smembers,
            "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        }.get(kind, r.exists)
        state[key] = (kind, await reader(key), await r.pttl(key))
    return state


@pytest.fixture
def tls_redis(tmp_path: Path) -> Any:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    service = start_service(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
            "--tls-ca-cert-file",
            str(ca_file),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret-pass",
            "--save",
            "",
            "--bind",
            "127.0.0.1",
        ],
        r"Ready to accept connections",
    )
    yield f"rediss://:s3cret-pass@127.0.0.1:{port}/0", str(ca_file)
    service.stop()


def test_rediss_source_with_password_and_test_certificate(tls_redis: Any, tmp_path: Path) -> None:
    url, ca_file = tls_redis

    async def prepare() -> None:
        r = aioredis.Redis.from_url(url, ssl_ca_certs=ca_file)
        await fill(r, conversations=1, generic=5)
        await r.aclose()

    asyncio.run(prepare())
    env = {**os.environ, "BRAINBOT_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "brainbot", "migrate", "--source", url, "--tls-ca-file", ca_file],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["verify_differences"] == 0
    assert b"s3cret-pass" not in done.stdout + done.stderr  # the password is redacted
    assert b"rediss://:***@127.0.0.1" in done.stdout
    untrusted = subprocess.run(
        [sys.executable, "-m", "brainbot", "migrate", "--source", url],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert untrusted.returncode != 0  # an unknown certificate is refused
    assert b"s3cret-pass" not in untrusted.stdout + untrusted.stderr


async def test_a_conversation_two_users_claim_goes_to_operators_only(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The old service let anyone add any conversation to their own set: a conversation in
    two users' sets is owned by neither after the migration, and the report says so."""
    await source.rpush("conversation:shared", json.dumps({"role": "user", "content": "hi"}))
    await source.rpush("conversation:mine", json.dumps({"role": "user", "content": "mine"}))
    await source.sadd("user:alice:conversations", "shared", "mine")
    await source.sadd("user:mallory:conversations", "shared")
    await source.sadd("user:o/dd:conversations", "odd-owner")  # any character in a user
    settings = settings_for(tmp_path)
    report = await migrate(redis_url, settings)
    assert report.verify_differences == 0
    assert report.notes["conversation several users claim: operators only"] == 1
    async with KVStore(EmbeddedKV(settings.embedded_kv_path), write_interval=0) as kv:
        conversations = ConversationStore(kv)
        assert await conversations.owns("mine", "alice")
        assert not await conversations.owns("shared", "alice")
        assert not await conversations.owns("shared", "mallory")
        assert await conversations.owns("odd-owner", "o/dd")


async def test_conversations_the_bot_cannot_read_are_reported_and_the_run_goes_on(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Reviewed: with a long prefix, a conversation's Redis key fit KV's 512 bytes but its
    message keys (15 bytes longer) did not: the bulk write refused them and the whole run
    stopped. A message whose role is a list raised TypeError (unhashable): the run crashed.
    A conversation id over the bot's 128 bytes became messages no reader can reach."""
    prefix = "p" * 360
    hi = json.dumps({"role": "user", "content": "hi"})
    await source.rpush("conversation:" + "c" * 128, hi)  # its messages: 516 bytes
    await source.rpush("conversation:" + "d" * 129, hi)  # over 128: a plain list
    await source.rpush("conversation:odd-role", json.dumps({"role": ["user"], "content": "hi"}))
    await source.rpush("conversation:fine", hi)
    settings = settings_for(tmp_path)
    report = await migrate(redis_url, settings, options=Options(prefix=prefix))
    assert report.verify_differences == 0
    assert report.skipped == {
        "key refused by KV: UTF-8 encoded length of 516 exceeds key length limit of 512.": 1
    }
    assert report.notes == {
        "conversation id over 128 bytes: migrated as a plain list": 1,
        "not legacy conversation messages: migrated as a plain list": 1,
    }
    assert report.migrated == {"list/conversation": 1, "list/generic": 2}
    async with KVStore(EmbeddedKV(settings.embedded_kv_path), prefix=prefix) as kv:
        history = await ConversationStore(kv).history("fine")
        assert [m.content for m in history] == ["hi"]
        assert await kv.lrange("conversation:odd-role", 0, -1) == [
            json.dumps({"role": ["user"], "content": "hi"}).encode()
        ]
