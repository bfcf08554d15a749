"""The story's integration tests: conversation storage and sessions through `brainbot
serve` (logged in with identity tokens), concurrent appends from 8 OS processes, and
persistence across a kill -9 restart, on the embedded KV and through the REST client to
`brainbot kv serve`. The attacks are in test_security.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from brainbot.composition import open_store
from brainbot.config import Settings
from brainbot.storage.conversations import ConversationStore
from tests.support.processes import Service, start_kv_server
from tests.support.service import bot_env, login, new_conversation, start_bot


@pytest.fixture(params=["embedded", "rest"])
def store_env(
    request: pytest.FixtureRequest, tmp_path: Path, api_token: str
) -> Iterator[dict[str, str]]:
    """Environment that points brainbot at the embedded KV or, through the REST client,
    at a `brainbot kv serve` of its own."""
    env = bot_env(tmp_path / "data")
    if request.param == "embedded":
        yield env
        return
    server = start_kv_server(tmp_path / "kv-serve", api_token)
    yield {
        **env,
        "CLOUDFLARE_ACCOUNT_ID": "test-account",
        "CLOUDFLARE_KV_NAMESPACE_ID": "brainbot",
        "CLOUDFLARE_KV_API_TOKEN": api_token,
        "CLOUDFLARE_API_BASE_URL": server.url,
        # REST alone: the service's history is one key per message (no read-modify-write
        # across processes), so the REST-only store may open (docs/storage.md, Atomicity)
        "BRAINBOT_KV_SINGLE_WRITER": "1",
    }
    server.stop()


def kill_9(service: Service) -> None:
    os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=10)


def test_chat_sessions_and_history_survive_kill_9(store_env: dict[str, str]) -> None:
    bot = start_bot(store_env)
    try:
        with httpx.Client(base_url=bot.url, timeout=30) as http:
            auth = login(http, "alice")
            first = http.post("/chat", json={"message": "hi 0"}, headers=auth).json()
            cid = first["conversation"]  # new conversation ids come from the server
            replies = [first["reply"]] + [
                http.post(
                    "/chat", json={"conversation": cid, "message": f"hi {i}"}, headers=auth
                ).json()["reply"]
                for i in range(1, 3)
            ]
            assert replies == [f"brainbot heard: hi {i} (turn {i + 1})" for i in range(3)]
            note = {"content": "a note of mine"}
            url = f"/conversations/{cid}/messages"
            assert http.post(url, json=note, headers=auth).status_code == 201
            before = http.get(url, params={"limit": 50}, headers=auth).json()["messages"]
            assert len(before) == 7
            listed = http.get("/conversations", headers=auth).json()
            assert listed == {"conversations": [cid], "next_after": None}
    finally:
        kill_9(bot)  # no shutdown, no flush: what was acknowledged must be on disk already

    bot = start_bot(store_env)
    try:
        with httpx.Client(base_url=bot.url, timeout=30) as http:
            after = http.get(url, params={"limit": 50}, headers=auth).json()["messages"]
            assert after == before
            reply = http.post("/chat", json={"conversation": cid, "message": "back"}, headers=auth)
            assert reply.status_code == 200  # the session survived too
            assert reply.json()["reply"] == "brainbot heard: back (turn 5)"  # 3 turns, a note
            assert http.delete(f"/conversations/{cid}", headers=auth).json() == {"deleted": 9}
            assert http.get(url, headers=auth).status_code == 404  # gone, index entry too
            listed = http.get("/conversations", headers=auth).json()
            assert listed == {"conversations": [], "next_after": None}
            assert http.delete("/sessions", headers=auth).status_code == 204
            refused = http.post("/chat", json={"message": "x"}, headers=auth)
            assert refused.status_code == 401
            assert http.get(url, headers=auth).status_code == 401
    finally:
        bot.stop()


def test_bad_requests_get_clear_errors(store_env: dict[str, str]) -> None:
    bot = start_bot(store_env)
    try:
        with httpx.Client(base_url=bot.url, timeout=30) as http:
            auth = login(http, "bob")
            cid = new_conversation(http, auth)
            url = f"/conversations/{cid}/messages"
            json_type = {**auth, "Content-Type": "application/json"}
            assert http.post("/chat", content=b"not json", headers=json_type).status_code == 400
            missing = http.post("/chat", json={"conversation": cid}, headers=auth).json()["error"]
            assert missing == "'message' must be a non-empty string."
            assert (
                http.post(url, json={"role": "wizard", "content": "x"}, headers=auth).status_code
                == 400
            )
            surrogate = b'{"content": "\\ud800"}'
            assert http.post(url, content=surrogate, headers=json_type).status_code == 400
            assert http.get(url, params={"limit": "many"}, headers=auth).status_code == 400
            assert http.get(url, params={"limit": 0}, headers=auth).status_code == 400
            assert http.get(url, params={"before": "garbage"}, headers=auth).status_code == 400
            assert http.get(url).status_code == 401
            assert http.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
            huge = b"x" * (3 * 1024 * 1024)
            assert http.post(url, content=huge, headers=json_type).status_code == 413
            assert http.post("/sessions", json={"user": "a"}).status_code == 401  # no identity
            assert http.get(url, headers=auth).json() == {"messages": [], "next_before": None}
    finally:
        bot.stop()


def test_a_failing_responder_leaves_no_half_turn(tmp_path: Path) -> None:
    env = bot_env(tmp_path / "data", BRAINBOT_RESPONDER="tests.support.responders:Failing")
    bot = start_bot(env)
    try:
        with httpx.Client(base_url=bot.url, timeout=30) as http:
            auth = login(http, "carol")
            cid = new_conversation(http, auth)
            answer = http.post("/chat", json={"conversation": cid, "message": "hi"}, headers=auth)
            assert answer.status_code == 502
            messages = http.get(f"/conversations/{cid}/messages", headers=auth).json()
            assert messages == {"messages": [], "next_before": None}
    finally:
        bot.stop()


APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from brainbot.composition import open_store
    from brainbot.storage.conversations import ConversationStore, Message

    async def main(writer, n):
        async with open_store() as store:
            conversations = ConversationStore(store)
            for i in range(n):
                await conversations.append("shared", Message("user", f"{writer}:{i}"))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_eight_processes_append_to_one_conversation(store_env: dict[str, str]) -> None:
    writers, n = 8, 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, f"w{w}", str(n)], env={**os.environ, **store_env}
        )
        for w in range(writers)
    ]
    assert [p.wait(timeout=180) for p in procs] == [0] * writers

    async def read() -> list[str]:
        saved = {k: os.environ.get(k) for k in store_env}
        os.environ.update(store_env)
        try:
            async with open_store(Settings()) as store:
                return [
                    m.content for m in await ConversationStore(store).history("shared", limit=1000)
                ]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    contents = asyncio.run(read())
    assert sorted(contents) == sorted(
        f"w{w}:{i}" for w in range(writers) for i in range(n)
    )  # each once
    for w in range(writers):
        own = [int(c.split(":")[1]) for c in contents if c.startswith(f"w{w}:")]
        assert own == list(range(n))  # each writer's own order kept
