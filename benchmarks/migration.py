"""The migration at scale, as a user runs it: ``brainbot migrate`` and ``brainbot verify``
(each in its own process, its peak RSS read from /proc) on mixed keys of a real
redis-server, into the embedded KV and through the REST client to ``brainbot kv serve``,
against the floor: the fastest honest read of the same keys (SCAN plus the batch reader
the migration uses), measured in the same run. Through REST it also runs with 1 s of
latency added to every bulk request, to show writes in flight hide it."""

from __future__ import annotations

import gc
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from rich.table import Table
from tests.support.processes import start_kv_server

from brainbot.kv import EmbeddedKV
from brainbot.kv.namespace import PutItem
from brainbot.migration import files
from brainbot.migration.heap import tune_for_bulk
from brainbot.migration.run import backup_line, manifest_line
from brainbot.migration.source import Reader, connect, scan_batches
from brainbot.migration.transform import Options, plan

# the CLI in a fresh interpreter that reports its own peak RSS (VmHWM) on stderr
PROBE = """
import re, sys
from brainbot.cli import main
sys.argv = ["brainbot", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
status = open("/proc/self/status").read()
print("PEAK_RSS_KB", re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
sys.exit(code)
"""
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb(pid: int | str) -> int:
    """Resident pages of ``pid`` (shared ones included: summed over processes, an upper
    bound); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _tree_kb(pid: int) -> int:
    """The RSS of ``pid`` and of its children (the verify lanes) now."""
    total = _rss_kb(pid)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        total += sum(_rss_kb(child) for child in children)
    return total


async def fill(redis: aioredis.Redis, n: int) -> None:
    """n mixed keys: strings (some with TTLs), counters, hashes, lists, sets, sorted sets,
    and legacy conversations of 10 messages."""
    await redis.flushdb()
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        kind = i % 10
        if kind < 4:
            pipe.set(f"cache:{i}", f"value {i} " * 4, ex=86_400 if kind % 2 else None)
        elif kind == 4:
            pipe.incrby(f"counter:{i}", i)
        elif kind == 5:
            pipe.hset(f"user:{i}", mapping={"name": f"user {i}", "turns": i % 50})
        elif kind == 6:
            pipe.rpush(f"queue:{i}", "a", "b", "c")
        elif kind == 7:
            pipe.sadd(f"tags:{i}", "x", "y")
        elif kind == 8:
            pipe.zadd(f"scores:{i}", {"a": 1.0, "b": 2.5})
        else:
            pipe.rpush(
                f"conversation:{i}",
                *[
                    json.dumps(
                        {
                            "role": "user" if m % 2 == 0 else "assistant",
                            "content": f"m{m}",
                            "timestamp": 1_700_000_000 + m,
                        }
                    )
                    for m in range(10)
                ],
            )
        if i % 10_000 == 9_999:
            await pipe.execute()
            pipe = redis.pipeline(transaction=False)
    await pipe.execute()


async def read_floor(url: str) -> float:
    """SCAN and read every key as the migration must (type, TTL, size, value), nothing more."""
    redis = connect(url)
    reader = Reader(redis)
    start = time.perf_counter()
    async for _, keys in scan_batches(redis, count=1000):
        async for _ in reader.pieces(keys):
            pass
    seconds = time.perf_counter() - start
    await redis.aclose()
    return seconds


async def stages(url: str, tmp: Path) -> list[tuple[str, float]]:
    """Where ``migrate``'s CPU goes: each stage of its per-key work timed alone (CPU
    seconds of all this process's threads), SCAN step by SCAN step as the migration goes,
    so as much is alive at a time as in a run, with the collector tuned as the CLI tunes
    it; nothing overlaps."""
    redis = connect(url)
    reader = Reader(redis)
    kv = EmbeddedKV(tmp / "stages.sqlite3")
    options = Options()
    spent: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    batch: list[PutItem] = []
    backup: list[bytes] = []
    collector = gc.get_threshold()
    tune_for_bulk()

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        start = time.process_time()
        yield
        spent[stage] += time.process_time() - start

    async def write(items: list[PutItem]) -> None:
        with timed("embedded KV put_many: validation + SQLite"):
            await kv.put_many(items)

    try:
        start = time.process_time()
        async for _, keys in scan_batches(redis, count=1000):
            async for records in reader.pieces(keys):
                spent["read: SCAN + batch reader (client side)"] += time.process_time() - start
                now_ms = int(time.time() * 1000)
                with timed("plan: KV entries, stamped with a digest"):
                    plans = [plan(r, options, now_ms, "0123abcd", "tag") for r in records]
                with timed("backup lines"):
                    backup += [backup_line(r, now_ms) for r in records]
                with timed("manifest lines"):
                    _ = [manifest_line("run", p, p.items) for p in plans if not p.skipped]
                batch += [i for p in plans for i in p.items]
                if len(batch) >= 10_000:
                    await write(batch[:10_000])
                    del batch[:10_000]
                if sum(map(len, backup)) > 16 * 1024 * 1024:
                    with timed("backup gzip + fsync"):
                        files.append(tmp / "b.jsonl.gz", backup, compressed=True)
                    backup = []
                start = time.process_time()
        await write(batch)
        with timed("backup gzip + fsync"):
            files.append(tmp / "b.jsonl.gz", backup, compressed=True)
    finally:
        gc.set_threshold(*collector)
        await kv.aclose()
        await redis.aclose()
    return list(spent.items())


STAGES = (
    "read: SCAN + batch reader (client side)",
    "plan: KV entries, stamped with a digest",
    "backup lines",
    "backup gzip + fsync",
    "manifest lines",
    "embedded KV put_many: validation + SQLite",
)


@dataclass
class Run:
    target: str
    command: str
    keys: int
    seconds: float
    entries: int | None
    requests: int | None
    bulk_writes: int | None
    peak_mb: float
    tree_peak_mb: float
    """The command's RSS with its verify lanes' (processes of their own), at its peak."""


def cli(args: list[str], env: dict[str, str]) -> tuple[dict[str, object], float, float, float]:
    """Run ``brainbot *args``: its JSON answer, wall seconds, its peak RSS and the peak of
    its RSS with its children's (verify lanes), in MB. The tree is sampled every 50 ms
    from a thread of this process, so the sampling takes nothing from the measured one."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tree_peak = [0]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            tree_peak[0] = max(tree_peak[0], _tree_kb(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = process.communicate(timeout=3600)
    finally:
        running.clear()
        sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"brainbot {args[0]} failed: {err.decode()[-2000:]}")
    peak = re.search(rb"PEAK_RSS_KB (\d+)", err)
    assert peak is not None
    own = int(peak.group(1))
    answer: dict[str, object] = json.loads(out)
    return answer, seconds, own / 1024, max(own, tree_peak[0]) / 1024


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float | str) else 0


async def run(
    tmp: Path, redis_port: int, server_url: str, token: str, quick: bool
) -> tuple[Table, str]:
    sizes = (20_000, 50_000) if quick else (200_000, 1_000_000)
    # with 1 s per bulk request a run must last several seconds for the latency to be hidden
    # behind reading: the largest size up to 200,000
    latency_size = max(n for n in sizes if n <= 200_000)
    url = f"redis://127.0.0.1:{redis_port}/1"
    redis = aioredis.Redis.from_url(url)
    slow = start_kv_server(tmp / "serve-slow", token, "--bulk-latency", "1")
    base_env = {**os.environ, "CLOUDFLARE_API_BUDGET": str(10**9)}
    for name in list(base_env):
        if name.startswith(("CLOUDFLARE_KV", "CLOUDFLARE_ACCOUNT", "BRAINBOT_")):
            del base_env[name]
    floors: dict[int, float] = {}
    runs: list[Run] = []
    split: list[tuple[str, float]] = []
    previous_env = base_env
    try:
        for n in sizes:
            await fill(redis, n)
            floors[n] = await read_floor(url)
            if n == latency_size:
                split = await stages(url, tmp)
            targets = [("embedded KV", None), ("REST → kv serve", server_url)]
            if n == latency_size:
                targets.append(("REST → kv serve, 1 s bulk latency", slow.url))
            for target, base_url in targets:
                for command in ("migrate --no-verify", "verify", "migrate"):
                    if base_url == slow.url and command != "migrate --no-verify":
                        continue
                    env = {**base_env, "BRAINBOT_DATA_DIR": str(tmp / f"mig-{len(runs)}")}
                    if base_url is not None:
                        env |= {
                            "CLOUDFLARE_ACCOUNT_ID": "test-account",
                            "CLOUDFLARE_KV_NAMESPACE_ID": f"mig-{n}-{len(runs)}",
                            "CLOUDFLARE_KV_API_TOKEN": token,
                            "CLOUDFLARE_API_BASE_URL": base_url,
                        }
                    if command == "verify":  # of what the run before wrote
                        env = previous_env
                    answer, seconds, peak, tree_peak = cli([*command.split(), "--source", url], env)
                    previous_env = env
                    remote = base_url is not None
                    runs.append(
                        Run(
                            target,
                            command,
                            n,
                            seconds,
                            _int(answer.get("kv_entries", answer.get("entries"))),
                            _int(answer.get("api_requests")) if remote else None,
                            _int(answer["bulk_writes"]) if "bulk_writes" in answer else None,
                            peak,
                            tree_peak,
                        )
                    )
    finally:
        slow.stop()
        await redis.flushdb()
        await redis.aclose()
    return _render(runs, floors, sizes, split, latency_size)


def _render(
    runs: list[Run],
    floors: dict[int, float],
    sizes: tuple[int, int],
    split: list[tuple[str, float]],
    split_keys: int,
) -> tuple[Table, str]:
    table = Table(
        "keys",
        "target",
        "command",
        "s",
        "× floor",
        "keys/s",
        "KV entries",
        "API requests",
        "bulk writes",
        "peak RSS MB",
    )
    lines = [
        "| keys | target | command | seconds | × floor | keys/s | KV entries | API requests "
        "| bulk writes (minimum) | peak RSS |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        cells = [
            f"{n:,}",
            "Redis",
            "read: SCAN + batch reader (the floor)",
            f"{floors[n]:.1f}",
            "1.0×",
            f"{n / floors[n]:,.0f}",
            "-",
            "-",
            "-",
            "-",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
        for r in (r for r in runs if r.keys == n):
            minimum = math.ceil(r.entries / 10_000) if r.entries else 0
            cells = [
                f"{n:,}",
                r.target,
                f"`{r.command}`",
                f"{r.seconds:.1f}",
                f"{r.seconds / floors[n]:.2f}×",
                f"{n / r.seconds:,.0f}",
                f"{r.entries:,}" if r.entries else "-",
                "-" if r.requests is None else f"{r.requests:,}",
                "-" if r.bulk_writes is None else f"{r.bulk_writes:,} ({minimum:,})",
                f"{r.tree_peak_mb:.0f} MB"
                + (f" (CLI {r.peak_mb:.0f} MB)" if r.tree_peak_mb > r.peak_mb * 1.05 else ""),
            ]
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
    latency = [r for r in runs if "latency" in r.target]
    plain = (
        [
            r
            for r in runs
            if r.target == "REST → kv serve"
            and r.command == "migrate --no-verify"
            and r.keys == latency[0].keys
        ]
        if latency
        else []
    )
    ratio = ""
    if latency and plain:
        ratio = (
            f"\n\nWith 1 s added to every bulk request the REST migration keeps "
            f"{plain[0].seconds / latency[0].seconds:.2f}× the keys per second it has without "
            "(several bulk writes in flight while Redis is read)."
        )
    text = (
        "## Migration: Redis to KV\n\n"
        "Mixed keys (strings with and without TTLs, counters, hashes, lists, sets, sorted "
        "sets, and legacy conversations of 10 messages, which become one KV entry per message) "
        "from a real redis-server on loopback. Each command runs as a user runs it, "
        "`brainbot <command> --source redis://...` in its own process (interpreter start "
        "included; peak RSS from /proc: of that process with the lane processes `verify` "
        "starts for these sources, one per CPU, summed (shared pages counted in each: an "
        "upper bound), sampled every 50 ms from outside; the CLI process alone in brackets "
        "where they differ). "
        "`migrate --no-verify` writes (backup, manifest, "
        "checkpoints included); `verify` checks what it wrote; `migrate` is both, into a "
        "fresh namespace. The floor is the fastest honest read of the same keys: SCAN plus "
        "the batch reader the migration uses (type, TTL, size and value of every key), "
        "measured in the same run. API requests are the REST client's HTTP requests; the "
        "minimum of bulk writes is ceil(entries / 10,000)."
        + ratio
        + "\n\n"
        + "\n".join(lines)
        + "\n"
        + _stages_text(split, split_keys, floors[split_keys])
    )
    return table, text


def _stages_text(split: list[tuple[str, float]], n: int, floor: float) -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    total = sum(seconds for _, seconds in split)
    rows = [f"| {name} | {seconds:.2f} | {seconds / n * 1e6:.1f} |" for name, seconds in split]
    return (
        f"\nWhere `migrate`'s CPU goes ({n:,} keys): each stage of its per-key work alone, "
        "one after the other on the same keys, in one process (CPU seconds of all its "
        "threads). The floor's wall time is mostly redis-server's; the stages after the "
        "read are the migration's own, and not all of it: the run's bookkeeping (what KV "
        "holds, tallies, claims, checkpoints) is not timed here. Their sum over the "
        f"{cpus} CPUs of this machine, {total / (cpus or 1):.1f} s "
        f"({total / (cpus or 1) / floor:.1f}× the floor), is a lower bound on the wall time "
        "of this per-key work, even if nothing waited on anything.\n\n"
        "| stage | CPU s | µs per key |\n|---|---:|---:|\n"
        + "\n".join(rows)
        + f"\n| all stages | {total:.2f} | {total / n * 1e6:.1f} |\n"
    )
