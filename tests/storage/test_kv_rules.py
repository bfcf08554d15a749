"""KV's rules as KVStore handles them: the 60 s TTL floor, 1 write/s per key, atomicity
within a process (and last-writer-wins across processes), read-your-writes under lag."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from brainbot.kv import EmbeddedKV
from brainbot.kv.faults import Faults
from brainbot.storage import KVStore, TTLTooShort, WriteRateExceeded, WrongTypeError
from tests.support.kv import fault_args, rest_client
from tests.support.processes import start_kv_server


class VirtualClock:
    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds


# -- TTL under 60 s ------------------------------------------------------------------------


async def test_short_ttl_is_exact_for_callers_while_kv_keeps_the_entry_60_s(tmp_path: Path) -> None:
    clock = VirtualClock()
    kv = EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock)
    async with KVStore(kv, clock=clock, write_interval=0) as store:
        await store.set("otp", "123456", ex=5)
        assert await store.ttl("otp") == 5
        entry = await kv.get("otp")
        assert entry is not None
        assert entry.expiration is not None
        assert entry.expiration >= int(clock.now) + 60  # KV's floor, clamped
        clock.now += 5.5
        assert await store.get("otp") is None
        assert await store.exists("otp") == 0
        assert await store.ttl("otp") == -2
        assert await store.keys() == []
        assert await kv.get("otp") is not None  # still stored, hidden until KV drops it


async def test_short_ttl_can_be_refused_instead(tmp_path: Path) -> None:
    async with KVStore(
        EmbeddedKV(tmp_path / "kv.sqlite3"), short_ttl="reject", write_interval=0
    ) as store:
        with pytest.raises(TTLTooShort, match="60 s minimum"):
            await store.set("otp", "123456", ex=5)
        assert await store.get("otp") is None  # nothing written
        await store.set("session", "s", ex=60)
        with pytest.raises(TTLTooShort):
            await store.expire("session", 30)
        assert 59 <= await store.ttl("session") <= 60  # unchanged


# -- 1 write per second per key ------------------------------------------------------------


async def test_writes_to_one_key_are_spaced_a_second_apart(tmp_path: Path) -> None:
    clock = VirtualClock()
    async with KVStore(
        EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock),
        clock=clock,
        sleep=clock.sleep,
        write_interval=1.0,  # Cloudflare's rule, on a namespace that does not need it
    ) as store:
        for _ in range(4):
            await store.incr("hits")
        await store.set("other", "x")  # another key: no wait
        assert await store.get("hits") == b"4"
    assert clock.slept == [1.0, 1.0, 1.0]


async def test_or_refused_with_a_clear_error(tmp_path: Path) -> None:
    clock = VirtualClock()
    async with KVStore(
        EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock),
        clock=clock,
        write_rate="error",
        write_interval=1.0,
    ) as store:
        await store.set("k", "first")
        with pytest.raises(WriteRateExceeded, match="one write per second per key"):
            await store.set("k", "second")
        assert await store.get("k") == b"first"  # the refused write changed nothing
        clock.now += 1.0
        await store.set("k", "third")
        assert await store.get("k") == b"third"


async def test_paced_store_never_meets_cloudflares_per_key_limit(
    tmp_path: Path, api_token: str
) -> None:
    """Against a server enforcing 1 write/s per key and a client that may not retry, the
    store's own spacing keeps every write accepted."""
    from brainbot.kv import RetryPolicy

    service = start_kv_server(
        tmp_path / "srv", api_token, *fault_args(Faults(key_write_limit=True))
    )
    try:
        namespace = rest_client(service.url, api_token, "paced", retry=RetryPolicy(attempts=1))
        async with KVStore(namespace, write_interval=1.05) as store:
            for i in range(3):
                await store.rpush("log", f"line {i}")
            assert await store.lrange("log", 0, -1) == [b"line 0", b"line 1", b"line 2"]
    finally:
        service.stop()


# -- atomicity ------------------------------------------------------------------------------


async def test_read_modify_write_is_atomic_among_tasks(store_factory) -> None:  # type: ignore[no-untyped-def]
    async with store_factory() as store:
        await asyncio.gather(*(store.incr("counter") for _ in range(100)))
        await asyncio.gather(*(store.rpush("list", i) for i in range(50)))
        await asyncio.gather(*(store.hincrby("hash", "n", 2) for _ in range(50)))
        await asyncio.gather(*(store.sadd("set", i % 10) for i in range(50)))
        assert await store.get("counter") == b"100"
        assert sorted(int(x) for x in await store.lrange("list", 0, -1)) == list(range(50))
        assert await store.hget("hash", "n") == b"100"
        assert await store.scard("set") == 10


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from brainbot.kv import EmbeddedKV
    from brainbot.storage import KVStore

    async def main(path, name, n):
        async with KVStore(EmbeddedKV(path), write_interval=0, recent_window=0) as store:
            for i in range(n):
                await store.incr("shared")
                await store.rpush("own:" + name, i)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_across_processes_last_writer_wins_and_nothing_is_corrupted(tmp_path: Path) -> None:
    """The documented guarantee across processes: a key written by one process only is
    exact; a key incremented by several is a valid count between one writer's share and
    the total (lost updates, never a torn value)."""
    path = tmp_path / "kv.sqlite3"
    n, writers = 40, 4
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{w}", str(n)])
        for w in range(writers)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)

    async def check() -> None:
        async with KVStore(EmbeddedKV(path), write_interval=0) as store:
            for w in range(writers):
                assert await store.lrange(f"own:p{w}", 0, -1) == [str(i).encode() for i in range(n)]
            shared = int(await store.get("shared"))
            assert n <= shared <= n * writers

    asyncio.run(check())


# -- read-your-writes under eventual consistency ---------------------------------------------


async def test_own_writes_are_read_back_while_list_lags(tmp_path: Path, api_token: str) -> None:
    service = start_kv_server(tmp_path / "srv", api_token, *fault_args(Faults(list_lag=30.0)))
    try:
        namespace = rest_client(service.url, api_token, uuid.uuid4().hex)
        async with KVStore(namespace, write_interval=0, recent_window=60) as store:
            await store.set("session:1", "alice")
            await store.rpush("history", "hello")
            assert sorted(await store.keys("*")) == [b"history", b"session:1"]
            await store.delete("session:1")
            assert await store.keys("*") == [b"history"]
            assert await store.get("session:1") is None
            # another process, without this one's memory, sees the lagging list:
            lagging = KVStore(namespace, write_interval=0, recent_window=0)
            assert await lagging.keys("*") == []
    finally:
        service.stop()


async def test_decode_responses_and_wrongtype(tmp_path: Path) -> None:
    async with KVStore(
        EmbeddedKV(tmp_path / "kv.sqlite3"), decode_responses=True, write_interval=0
    ) as store:
        await store.set("s", "é")
        await store.rpush("l", "a", b"b")
        assert await store.get("s") == "é"
        assert await store.lrange("l", 0, -1) == ["a", "b"]
        assert await store.type("l") == "list"
        assert await store.keys() == ["l", "s"] or sorted(await store.keys()) == ["l", "s"]
        with pytest.raises(WrongTypeError, match="WRONGTYPE"):
            await store.get("l")
        with pytest.raises(WrongTypeError):
            await store.hset("s", "f", "v")


async def test_a_refused_write_changes_nothing_even_in_memory(tmp_path: Path) -> None:
    clock = VirtualClock()
    namespace = EmbeddedKV(tmp_path / "kv.sqlite3", clock=clock)
    async with KVStore(
        namespace, clock=clock, write_rate="error", write_interval=1.0, recent_window=60
    ) as store:
        await store.rpush("l", "a")
        with pytest.raises(WriteRateExceeded):
            await store.rpush("l", "b")
        assert await store.lrange("l", 0, -1) == [b"a"]
        await store.set("k", "v")
        with pytest.raises(WriteRateExceeded):
            await store.expire("k", 100)
        assert await store.ttl("k") == -1
        clock.now += 1
        await store.set("src", "v")
        clock.now += 0.5
        await store.set("dst", "old")
        clock.now += 0.6  # src may be written again, dst not yet
        with pytest.raises(WriteRateExceeded):
            await store.rename("src", "dst")
        assert (await store.get("src"), await store.get("dst")) == (b"v", b"old")


async def test_a_cancelled_waiter_leaves_no_lock_behind(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0.3) as store:
        await store.set("b", "1")
        holder = asyncio.create_task(store.set("b", "2"))  # holds b's lock while it waits
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(store.mset({"a": "x", "b": "y"}))  # takes a, waits for b
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await holder
        assert await asyncio.wait_for(store.incr("a"), timeout=5) == 1  # a is free again


async def test_flushdb_waits_for_writes_under_way(tmp_path: Path) -> None:
    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"), write_interval=0.3) as store:
        await store.set("k", "1")
        pending = asyncio.create_task(store.incr("k"))  # paced: still waiting to write
        await asyncio.sleep(0.05)
        await store.flushdb()
        assert await pending == 2
        assert await store.keys() == []  # FLUSHDB came after the INCR, as in Redis


async def test_the_stores_rules_follow_the_namespace_it_runs_on(tmp_path: Path) -> None:
    from brainbot.kv import ReadYourWrites

    async with KVStore(EmbeddedKV(tmp_path / "kv.sqlite3")) as local:
        assert (local.write_interval, local.recent_window) == (0.0, 0.0)  # strongly consistent
    remote = rest_client("http://127.0.0.1:9/client/v4", "token", "ns")
    async with KVStore(remote) as store:
        assert (store.write_interval, store.recent_window) == (1.0, 60.0)  # Cloudflare's rules
        assert isinstance(store.namespace, ReadYourWrites)
        assert store.namespace.inner is remote


async def test_flushdb_deletes_a_key_another_process_wrote_after_this_one_deleted_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kv.sqlite3"
    async with KVStore(EmbeddedKV(path), recent_window=60) as mine:
        await mine.set("k", "v")
        await mine.delete("k")  # remembered as gone for 60 s
        async with KVStore(EmbeddedKV(path)) as theirs:
            await theirs.set("k", "theirs")  # written since, by another process
            await mine.flushdb()
            assert await theirs.get("k") is None
