"""The embedded KV: durability under kill -9, several processes on one file, and
behaviour equal to a plain reference model (Hypothesis)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainbot.kv import EmbeddedKV, Entry, iter_keys
from brainbot.kv.errors import KVError
from brainbot.kv.namespace import PutItem

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from brainbot.kv import EmbeddedKV

    async def main(path, tag):
        async with EmbeddedKV(path) as kv:
            i = 0
            while True:
                key = f"{tag}:{i:07d}"
                await kv.put(key, (key * 50).encode(), metadata={"i": i})
                print(key, flush=True)  # acknowledged: put() returned
                i += 1

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def start_writer(path: Path, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), tag], stdout=subprocess.PIPE, text=True
    )


async def test_kill_9_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    for round_ in range(3):
        writer = start_writer(path, f"r{round_}")
        assert writer.stdout is not None
        acknowledged = [writer.stdout.readline().strip() for _ in range(200 + 150 * round_)]
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        acknowledged += [line.strip() for line in writer.stdout if line.strip()]
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        async with EmbeddedKV(path) as kv:
            got = await kv.get_many(acknowledged)
            for i, key in enumerate(acknowledged):
                assert got[key] == Entry((key * 50).encode(), None, {"i": i}), key


async def test_several_processes_share_one_store(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    writers = [start_writer(path, f"p{n}") for n in range(4)]
    acknowledged: list[str] = []
    try:
        for writer in writers:
            assert writer.stdout is not None
            acknowledged += [writer.stdout.readline().strip() for _ in range(150)]
    finally:
        for writer in writers:
            writer.send_signal(signal.SIGTERM)
            writer.wait()
    async with EmbeddedKV(path) as kv:
        listed = {info.name async for info in iter_keys(kv)}
    assert set(acknowledged) <= listed
    assert {name.split(":")[0] for name in listed} == {"p0", "p1", "p2", "p3"}


async def test_expired_rows_are_swept_from_disk(tmp_path: Path) -> None:
    now = [float(int(time.time()))]
    async with EmbeddedKV(tmp_path / "kv.sqlite3", clock=lambda: now[0]) as kv:
        await asyncio.gather(*(kv.put(f"old{i}", b"v", expiration_ttl=60) for i in range(100)))
        now[0] += 120
        for i in range(600):  # writes trigger the periodic sweep
            await kv.put(f"new{i % 10}", b"v")
    with sqlite3.connect(tmp_path / "kv.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM entries WHERE key LIKE 'old%'").fetchone() == (0,)


# -- reference model ----------------------------------------------------------------------

KEYS = st.text(alphabet=st.sampled_from("ab/é🙂\x7f\ufb01z"), min_size=1, max_size=4).filter(
    lambda k: k not in (".", "..")
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.binary(max_size=8), st.sampled_from([None, 60, 600])),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("tick"), st.integers(min_value=0, max_value=700)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, prefix=st.sampled_from(["", "a", "é", "🙂", "ab"]), page=st.integers(10, 12))
def test_behaves_like_a_sorted_dict_with_expiry(
    tmp_path_factory: object, ops: list[tuple[object, ...]], prefix: str, page: int
) -> None:
    async def run() -> None:
        directory = tmp_path_factory.mktemp("model")  # type: ignore[attr-defined]
        now = [1_000_000.0]
        model: dict[str, tuple[bytes, int | None]] = {}
        async with EmbeddedKV(directory / "kv.sqlite3", clock=lambda: now[0]) as kv:
            for op in ops:
                if op[0] == "put":
                    _, key, value, ttl = op
                    await kv.put(key, value, expiration_ttl=ttl)  # type: ignore[arg-type]
                    model[key] = (value, None if ttl is None else int(now[0]) + ttl)  # type: ignore[index,assignment,operator]
                elif op[0] == "delete":
                    await kv.delete(op[1])  # type: ignore[arg-type]
                    model.pop(op[1], None)  # type: ignore[call-overload]
                else:
                    now[0] += op[1]  # type: ignore[operator]
            live = {k: v for k, v in model.items() if v[1] is None or v[1] > now[0]}
            expected = sorted((k for k in live if k.startswith(prefix)), key=str.encode)
            listed = [i.name async for i in iter_keys(kv, prefix=prefix, page_size=page)]
            assert listed == expected
            for key, (value, expiration) in live.items():
                assert await kv.get(key) == Entry(value, expiration)

    asyncio.run(run())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "é", "nul\x00key", "🙂"]),
            st.one_of(
                st.binary(max_size=40),  # often not UTF-8: written row by row
                st.text(max_size=40).map(str.encode),  # NULs and controls included
                st.just(b"x" * (70 * 1024)),  # past the JSON path's size
            ),
            st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_bulk_writes_keep_every_byte_and_the_last_write_of_a_key(
    tmp_path_factory: object, writes: list[tuple[str, bytes, dict[str, str] | None]]
) -> None:
    """put_many sends text rows as one JSON document and the rest row by row: whichever
    way a row goes, its bytes come back exactly, and the last write of a key wins."""

    async def run() -> None:
        directory = tmp_path_factory.mktemp("bulk")  # type: ignore[attr-defined]
        async with EmbeddedKV(directory / "kv.sqlite3") as kv:
            await kv.put_many([PutItem(k, v, None, None, m) for k, v, m in writes])
            expected = {k: (v, m) for k, v, m in writes}
            got = await kv.get_many(list(expected))
            for key, (value, metadata) in expected.items():
                entry = got[key]
                assert entry is not None
                assert (entry.value, entry.metadata) == (value, metadata)
                assert isinstance(entry.value, bytes)

    asyncio.run(run())


async def test_a_list_page_costs_the_same_deep_in_the_namespace(tmp_path: Path) -> None:
    """Counted in SQLite VM steps (not time): the last page of a listing does no more work
    than the first (a page once scanned from the prefix up to its cursor: quadratic)."""
    async with EmbeddedKV(tmp_path / "kv.sqlite3") as kv:
        await kv.put_many([PutItem(f"k{i:06d}", b"v") for i in range(20_000)])
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        kv._conn.set_progress_handler(count, 100)
        costs = []
        cursor = None
        while True:
            steps[0] = 0
            page = await kv.list(prefix="k", cursor=cursor, limit=100)
            costs.append(steps[0])
            cursor = page.cursor
            if cursor is None:
                break
        assert len(costs) == 200
        assert max(costs[-10:]) < 2 * max(costs[:10]), (costs[:3], costs[-3:])


async def test_metadata_an_older_version_stored_reads_back_exactly(tmp_path: Path) -> None:
    """Integers past 64 bits (json wrote them; orjson would read a float) and NaN."""
    async with EmbeddedKV(tmp_path / "kv.sqlite3") as kv:
        await kv.put("k", b"v", metadata={"n": 1})
        kv._conn.execute(
            "UPDATE entries SET metadata = ? WHERE key = ?",
            ('{"n": 18446744073709551617, "f": NaN}', b"k"),
        )
        entry = await kv.get("k")
        assert entry is not None
        assert isinstance(entry.metadata, dict)
        assert entry.metadata["n"] == 18446744073709551617
        assert entry.metadata["f"] != entry.metadata["f"]  # NaN


async def test_a_commit_that_fails_gives_the_write_lock_back(tmp_path: Path) -> None:
    """COMMIT itself can fail (an I/O error, a full disk): the transaction stayed open, so
    this process kept SQLite's write lock (every other process waited out its busy timeout,
    then failed) and its own next write failed ("cannot start a transaction within a
    transaction") until it exited. Fault injection: SQLite's authorizer refuses COMMIT."""
    path = tmp_path / "kv.sqlite3"
    kv = EmbeddedKV(path)
    await kv.put("a", b"1")

    def no_commit(action: int, arg: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_TRANSACTION and arg == "COMMIT"
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    kv._conn.set_authorizer(no_commit)
    try:
        with pytest.raises(KVError):
            await kv.put("b", b"2")
    finally:
        kv._conn.set_authorizer(None)
    other = EmbeddedKV(path, busy_timeout=1.0)
    try:
        await other.put("c", b"3")  # the lock is free: a second writer goes at once
        assert await other.get("b") is None  # nothing of the failed write stayed
    finally:
        await other.aclose()
    await kv.put("d", b"4")  # and this one writes again
    assert [k.name for k in (await kv.list()).keys] == ["a", "c", "d"]
    await kv.aclose()
