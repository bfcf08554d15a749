"""Read-modify-write is atomic across OS processes: on the embedded KV (SQLite
transactions) and through the gateway Worker (its Durable Object), in Miniflare.

Before: 4 processes x 100 ``incr`` on one key kept 156 of 400 on the embedded KV and 248
through the gateway. Each test here runs real writer processes
(``tests/support/rmw_writer.py``, ``open_store()`` as the bot opens it) and checks every
acknowledged update is there: after kill -9 of a writer, and after a restart of the Worker
from its persisted storage.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from brainbot.composition import load_settings, open_kv_store, open_store
from brainbot.errors import ConfigError, ResponseError, WrongTypeError
from brainbot.kv import GatewayKV
from brainbot.kv.embedded import EmbeddedKV
from brainbot.kv.errors import KVError
from brainbot.kv.namespace import PutItem
from brainbot.storage import KVStore
from tests.support.processes import PYTHONPATH, ROOT, Service, start_service

GATEWAY_DIR = ROOT / "workers" / "kv-gateway"
WRITERS = 4


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "BRAINBOT_"))}
    return {**env, "PYTHONPATH": PYTHONPATH, **extra}


def start_writers(
    env: dict[str, str], tmp: Path, rounds: int, *args: str, n: int = WRITERS
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    writers = []
    for w in range(n):
        acks = tmp / f"acks-{w}-{time.monotonic_ns()}"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.rmw_writer",
                f"w{w}",
                str(rounds),
                str(acks),
                *args,
            ],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        writers.append((process, acks))
    return writers


def finish(writers: list[tuple[subprocess.Popen[bytes], Path]]) -> list[list[str]]:
    """Wait for every writer; the acknowledgements of each."""
    acked = []
    for process, acks in writers:
        _, err = process.communicate(timeout=300)
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"writer failed: {err.decode()[-3000:]}")
        acked.append(acks.read_text().splitlines() if acks.exists() else [])
    return acked


async def check_every_update_kept(store: KVStore, rounds: int, acked: list[list[str]]) -> None:
    total = WRITERS * rounds
    assert all(len(a) == len(acked[0]) for a in acked)
    assert int(await store.get("rmw:counter")) == total
    assert float(await store.get("rmw:float")) == total * 0.5
    assert await store.strlen("rmw:text") == total
    assert sorted(await store.lrange("rmw:list", 0, -1)) == sorted(
        f"w{w}:{i}".encode() for w in range(WRITERS) for i in range(rounds)
    )
    assert await store.hget("rmw:hash", "field") == str(total).encode()
    assert await store.hlen("rmw:fields") == total
    assert await store.scard("rmw:set") == total
    assert await store.zscore("rmw:zset", "member") == total
    # SET NX: exactly one writer claimed each round's key, and only the winner heard True
    claims = [line.split() for a in acked for line in a if line.startswith("setnx ")]
    winners = Counter(i for _, i, answer in claims if answer == "True")
    assert winners == Counter({str(i): 1 for i in range(rounds)})
    # every answer a writer heard is one no other writer heard (INCR answers are unique)
    incr = [line.split()[2] for a in acked for line in a if line.startswith("incr ")]
    assert len(set(incr)) == total


# -- the embedded KV -----------------------------------------------------------------------


def test_every_update_of_four_processes_is_kept_on_the_embedded_kv(tmp_path: Path) -> None:
    rounds = 40
    env = clean_env(BRAINBOT_DATA_DIR=str(tmp_path / "data"))
    acked = finish(start_writers(env, tmp_path, rounds))
    settings = load_settings(BRAINBOT_DATA_DIR=tmp_path / "data")

    async def check() -> None:
        async with open_kv_store(settings) as store:
            await check_every_update_kept(store, rounds, acked)

    asyncio.run(check())


def test_a_writer_killed_mid_run_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    env = clean_env(BRAINBOT_DATA_DIR=str(tmp_path / "data"))
    writers = start_writers(env, tmp_path, 2000, "--only", "incr", n=3)
    victim, acks = writers[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not acks.exists() or len(acks.read_text()) < 2000):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    acked = finish(writers)
    assert 0 < len(acked[0]) < 2000  # killed mid-run
    settings = load_settings(BRAINBOT_DATA_DIR=tmp_path / "data")

    async def value() -> int:
        async with open_kv_store(settings) as store:
            return int(await store.get("rmw:counter"))

    counted = sum(len(a) for a in acked)
    # what was acknowledged is there; at most the one increment in flight when the
    # writer died committed without its acknowledgement reaching the log
    assert counted <= asyncio.run(value()) <= counted + 1


async def test_the_embedded_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    async with EmbeddedKV(tmp_path / "kv.sqlite3") as kv:
        await kv.put("a", b"1")

        def change(entries: object) -> tuple[dict[str, object], None]:
            raise RuntimeError("the command refused")

        with pytest.raises(RuntimeError):
            await kv.transact(["a", "b"], change)  # type: ignore[arg-type]
        assert (await kv.get("a")).value == b"1"  # type: ignore[union-attr]
        store = KVStore(kv)
        await store.set("s", "text")
        with pytest.raises(WrongTypeError):
            await store.lpush("s", "x")  # raised inside the transaction: nothing written
        with pytest.raises(ResponseError, match="not an integer"):
            await store.incr("s")
        assert await store.get("s") == b"text"


# -- the gateway Worker and its Durable Object, in Miniflare -------------------------------


def start_gateway(persist: Path, secret: str, *args: str) -> Service:
    return start_service(
        ["node", "serve.mjs", "--port", "0", "--persist", str(persist), *args],
        r"^READY (\S+)$",
        env={"KV_GATEWAY_SECRET": secret},
        cwd=GATEWAY_DIR,
    )


@pytest.fixture
def own_gateway(tmp_path: Path, gateway_secret: str) -> Iterator[tuple[Service, Path]]:
    """A gateway of this test's own, persisting KV and Durable Objects in ``tmp_path``."""
    persist = tmp_path / "gateway-state"
    service = start_gateway(persist, gateway_secret)
    yield service, persist
    service.stop()


def gateway_env(url: str, secret: str, tmp: Path) -> dict[str, str]:
    return clean_env(
        BRAINBOT_DATA_DIR=str(tmp / "data"),
        BRAINBOT_KV_GATEWAY_URL=url,
        BRAINBOT_KV_GATEWAY_SECRET=secret,
    )


def test_every_update_of_four_processes_is_kept_through_the_gateway(
    own_gateway: tuple[Service, Path], gateway_secret: str, tmp_path: Path
) -> None:
    service, _ = own_gateway
    rounds = 15
    env = gateway_env(service.url, gateway_secret, tmp_path)
    acked = finish(start_writers(env, tmp_path, rounds))

    async def check() -> None:
        async with KVStore(GatewayKV(service.url, gateway_secret)) as store:
            await check_every_update_kept(store, rounds, acked)

    asyncio.run(check())


def test_nothing_acknowledged_is_lost_to_a_killed_writer_or_a_worker_restart(
    own_gateway: tuple[Service, Path], gateway_secret: str, tmp_path: Path
) -> None:
    service, persist = own_gateway
    env = gateway_env(service.url, gateway_secret, tmp_path)
    writers = start_writers(env, tmp_path, 400, "--only", "incr", n=3)
    victim, acks = writers[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not acks.exists() or len(acks.read_text()) < 300):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    acked = finish(writers)
    assert 0 < len(acked[0]) < 400
    counted = sum(len(a) for a in acked)
    service.stop()  # the Worker goes away with whatever it had not written behind yet
    restarted = start_gateway(persist, gateway_secret)
    try:

        async def check() -> None:
            async with GatewayKV(restarted.url, gateway_secret) as kv:
                exact = await kv.read_exact(["rmw:counter"])
                assert counted <= int(exact["rmw:counter"].value) <= counted + 1  # type: ignore[union-attr]
                # and the write-behind resumes: KV itself gets the value
                for _ in range(100):
                    plain = await kv.get("rmw:counter")
                    if plain is not None and plain.value == exact["rmw:counter"].value:  # type: ignore[union-attr]
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"KV still holds {plain!r}")

        asyncio.run(check())
    finally:
        restarted.stop()


def test_a_hot_key_costs_at_most_one_kv_write_a_second(
    own_gateway: tuple[Service, Path], gateway_secret: str, tmp_path: Path
) -> None:
    """50 increments a second on one key (two processes at 25/s each, for 4 s): every one
    counted, read exactly at once, and KV written at most once a second for the key."""
    service, _ = own_gateway
    env = gateway_env(service.url, gateway_secret, tmp_path)
    started = time.monotonic()
    acked = finish(start_writers(env, tmp_path, 100, "--only", "incr", "--rate", "25", n=2))
    elapsed = time.monotonic() - started

    async def check() -> None:
        async with GatewayKV(service.url, gateway_secret) as kv:
            exact = await kv.read_exact(["rmw:counter"])
            assert exact["rmw:counter"].value == b"200"  # type: ignore[union-attr]
            assert sum(len(a) for a in acked) == 200
            await asyncio.sleep(1.5)  # the last write-behind
            stats = await kv._call({"op": "xstats", "key": "rmw:counter"})
            assert 2 <= stats["kv_writes"] <= elapsed + 2.5  # at most one a second
            assert (await kv.get("rmw:counter")).value == b"200"  # type: ignore[union-attr]

    asyncio.run(check())


def test_a_failed_write_behind_never_undoes_the_commits_made_while_it_ran(
    tmp_path: Path, gateway_secret: str
) -> None:
    """Every write-behind to KV fails (``--fail-write-behind``) after a commit of its key
    landed meanwhile. Before: the failure was recorded by storing the key's entry as it was
    when the write-behind began, over the newer commit: its version went back (a writer
    holding the old version then committed over the newer value) and its size no longer
    matched the stored value (a grown one made every read of the key fail for good)."""
    service = start_gateway(tmp_path / "gateway-state", gateway_secret, "--fail-write-behind")
    try:
        rounds = 30
        env = gateway_env(service.url, gateway_secret, tmp_path)
        acked = finish(start_writers(env, tmp_path, rounds, "--only", "append", n=2))
        assert sum(len(a) for a in acked) == 2 * rounds

        async def check() -> None:
            async with KVStore(GatewayKV(service.url, gateway_secret)) as store:
                assert await store.get("rmw:text") == b"x" * 2 * rounds  # exact: the object

        asyncio.run(check())
        assert any("simulated write-behind failure" in line for line in service.log)
    finally:
        service.stop()


def test_a_commit_that_fails_partway_through_storing_applies_nothing(
    tmp_path: Path, gateway_secret: str
) -> None:
    """A commit of 60 keys is some 180 storage pairs, stored 128 at a time. The object
    fails after the first part (``--fail-mid-commit``). Before: that part stayed, the
    transaction id with it, so the client's retry was answered "already applied": the
    commit reported done with a third of its keys new and the rest old. Now the parts
    are one storage transaction: nothing of it is applied, and the client gets the error."""
    service = start_gateway(tmp_path / "gateway-state", gateway_secret, "--fail-mid-commit")
    keys = [f"many:{i:02d}" for i in range(60)]

    async def run() -> None:
        async with GatewayKV(service.url, gateway_secret) as kv:
            for key in keys:  # one key a commit: 4 pairs, stored at once
                await kv.write_exact({key: PutItem(key, b"old")})
            before = await kv.read_exact(keys)
            with pytest.raises(KVError, match="simulated failure mid-commit"):
                await kv.write_exact({key: PutItem(key, b"new") for key in keys})
            after = await kv.read_exact(keys)
            assert {k: e.value for k, e in after.items() if e} == {k: b"old" for k in keys}
            assert after == before

    try:
        asyncio.run(run())
    finally:
        service.stop()


# -- REST alone: refused for live traffic unless one process writes ----------------------


def test_rest_alone_is_refused_for_live_traffic_unless_single_writer(tmp_path: Path) -> None:
    cloudflare = {
        "BRAINBOT_DATA_DIR": tmp_path,
        "CLOUDFLARE_ACCOUNT_ID": "acc",
        "CLOUDFLARE_KV_NAMESPACE_ID": "ns",
        "CLOUDFLARE_KV_API_TOKEN": "token-xyz",
        "CLOUDFLARE_API_BASE_URL": "http://127.0.0.1:9/client/v4",
    }
    with pytest.raises(ConfigError, match="BRAINBOT_KV_GATEWAY_URL") as caught:
        open_store(load_settings(**cloudflare))
    assert "token-xyz" not in str(caught.value)
    store = open_store(load_settings(**cloudflare, BRAINBOT_KV_SINGLE_WRITER=True))
    assert isinstance(store, KVStore)
    asyncio.run(store.aclose())


def test_many_processes_may_open_one_new_data_file_at_once(tmp_path: Path) -> None:
    """Found by the test above: switching a new SQLite file to WAL takes a lock SQLite does
    not wait for, so one of several workers starting together failed with "database is
    locked". Eight processes open one new file at the same instant: all succeed."""
    start = time.time() + 1.0
    script = (
        "import sys, time, asyncio\n"
        "from brainbot.kv import EmbeddedKV\n"
        f"time.sleep(max(0, {start} - time.time()))\n"
        "kv = EmbeddedKV(sys.argv[1])\n"
        "asyncio.run(kv.put(sys.argv[2], b'v'))\n"
        "asyncio.run(kv.aclose())\n"
    )
    path = tmp_path / "new.sqlite3"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(path), f"k{i}"], stderr=subprocess.PIPE)
        for i in range(8)
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, errors

    async def count() -> int:
        async with EmbeddedKV(path) as kv:
            return len((await kv.list()).keys)

    assert asyncio.run(count()) == 8
