"""The main job on embedded defaults, end to end (``brainbot demo``, ``./scripts/demo``).

1. start a throwaway redis-server and fill it with realistic legacy brainbot data
   (conversations, sessions, counters, cached values; keys with and without TTLs);
2. migrate it into the configured KV (the embedded KV unless Cloudflare is configured),
   with progress, and verify every key;
3. start the chat service on the migrated data: alice logs in with an identity token (her
   legacy session no longer opens anything), reads the history the legacy data says is
   hers, and takes a new turn;
4. stop Redis. Nothing needs an account or the network.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from brainbot.composition import (
    allowed_hosts,
    auth_secret,
    chat_service,
    load_settings,
    migration_runs,
    open_namespace,
)
from brainbot.config import Settings
from brainbot.migration import Options, migrate_redis_to_kv, verify
from brainbot.service.auth import mint

LEGACY_SESSION = "demo-session-alice-000000000001"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: run ./scripts/setup")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


async def fill_legacy(url: str, conversations: int = 200) -> int:
    """The old bot's data: what brainbot kept in Redis before the move."""
    import redis.asyncio as aioredis

    rng = random.Random(26)
    redis = aioredis.Redis.from_url(url)
    await redis.flushdb()
    pipe = redis.pipeline(transaction=False)
    for c in range(conversations):
        turns = rng.randint(2, 30)
        messages = []
        for t in range(turns):
            messages.append(
                {
                    "role": "user",
                    "content": f"question {t} in chat {c}",
                    "timestamp": 1_760_000_000 + c * 1000 + 2 * t,
                }
            )
            messages.append(
                {
                    "role": "assistant",
                    "content": f"answer {t} in chat {c} ✓",
                    "timestamp": 1_760_000_001 + c * 1000 + 2 * t,
                }
            )
        pipe.rpush(f"conversation:chat-{c}", *[json.dumps(m, ensure_ascii=False) for m in messages])
        if c % 3 == 0:
            pipe.expire(f"conversation:chat-{c}", 30 * 86_400)
    pipe.set(
        f"session:{LEGACY_SESSION}",
        json.dumps({"user": "alice", "conversation": "chat-0"}),
        ex=7200,
    )
    for s in range(50):
        pipe.set(
            f"session:legacy-session-{s:06d}-xyz",
            json.dumps({"user": f"user{s}"}),
            ex=rng.randint(120, 7200),
        )
    pipe.sadd("user:alice:conversations", "chat-0", "chat-1", "chat-2")  # the old owner sets
    pipe.sadd("user:bob:conversations", "chat-3")
    pipe.set("stats:messages_total", 12_345)
    pipe.hset("stats:daily", mapping={"2026-11-24": 812, "2026-11-25": 907})
    for k in range(300):
        pipe.set(f"cache:embedding:{k}", rng.randbytes(64), ex=3600 if k % 2 else None)
    pipe.zadd("leaderboard:users", {f"user{u}": rng.random() * 100 for u in range(40)})
    pipe.sadd("features:enabled", "history", "sessions", "kv")
    await pipe.execute()
    total = int(await redis.dbsize())
    await redis.aclose()
    return total


async def serve_and_show(console: Console, settings: Settings) -> None:
    service = chat_service(settings)
    port = _free_port()
    app = service.app(allowed_hosts=allowed_hosts(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no event for this  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    console.rule(f"brainbot serve on {base}, reading the migrated data")
    secret = auth_secret(settings)
    assert secret is not None, "the demo signs its own identity token"
    identity = mint(secret, "alice", audience=settings.auth_audience)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        stale = await http.get(
            "/conversations/chat-0/messages",
            headers={"Authorization": f"Bearer {LEGACY_SESSION}"},
        )
        console.print(f"alice's legacy session id -> {stale.status_code} (log in again)")
        login = await http.post("/sessions", headers={"Authorization": f"Bearer {identity}"})
        session = login.json()["session"]
        console.print(f"POST /sessions with alice's identity token -> {login.status_code}")
        auth = {"Authorization": f"Bearer {session}"}
        history = (
            await http.get("/conversations/chat-0/messages", params={"limit": 6}, headers=auth)
        ).json()
        table = Table(
            "role", "content", title="GET /conversations/chat-0/messages?limit=6 (migrated)"
        )
        for message in history["messages"]:
            table.add_row(message["role"], message["content"])
        console.print(table)
        bobs = await http.get("/conversations/chat-3/messages", headers=auth)
        console.print(f"bob's chat-3 for alice -> {bobs.status_code} (not hers)")
        turn = await http.post(
            "/chat",
            json={"conversation": "chat-0", "message": "hello after the move"},
            headers=auth,
        )
        console.print(f"POST /chat as alice -> {turn.status_code}: {turn.json()['reply']}")
    server.should_exit = True
    await task


async def tour(console: Console, settings: Settings) -> int:
    options = Options(prefix=settings.kv_prefix)
    with tempfile.TemporaryDirectory(prefix="brainbot-demo-redis-") as workdir:
        redis_process, url = start_redis(Path(workdir))
        try:
            console.rule("1. a throwaway Redis with legacy brainbot data")
            total = await fill_legacy(url)
            console.print(f"{url}: {total} keys (conversations, sessions, counters, cached values)")
            console.rule("2. migrate into KV (embedded unless Cloudflare is configured) and verify")
            with Progress(
                TextColumn("migrating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} keys/s"),
                TimeElapsedColumn(),
                console=console,
            ) as bar:
                task = bar.add_task("migrate", total=total, rate="-")

                def progress(done: int, _: int | None) -> None:
                    speed = bar.tasks[0].speed
                    bar.update(task, completed=done, rate=f"{speed:,.0f}" if speed else "-")

                async with open_namespace(settings, purpose="bulk") as kv:
                    report = await migrate_redis_to_kv(
                        url,
                        namespace=kv,
                        runs=migration_runs(settings),
                        options=options,
                        progress=progress,
                    )
            summary = Table("what", "count", title=f"migration {report.run_id}")
            for kind, n in sorted(report.migrated.items()):
                summary.add_row(f"migrated {kind}", str(n))
            summary.add_row("KV entries written", str(report.kv_entries))
            for reason, n in sorted(report.skipped.items()):
                summary.add_row(f"skipped: {reason}", str(n))
            summary.add_row("verify: differences", str(report.verify_differences))
            console.print(summary)
            async with open_namespace(settings, purpose="bulk") as kv:
                again = await verify(url, namespace=kv, options=options)
            found = len(again.differences)
            console.print(f"brainbot verify: {again.checked} keys checked, {found} differences")
            await serve_and_show(console, settings)
        finally:
            redis_process.terminate()
            redis_process.wait(timeout=10)
    console.rule("done: Redis stopped; the data lives in " + str(settings.embedded_kv_path))
    return 0 if not again.differences and report.verify_differences == 0 else 1


def main() -> None:
    raise SystemExit(asyncio.run(tour(Console(), load_settings())))


if __name__ == "__main__":
    main()
