"""`brainbot serve` as a real process for tests, and identities to log in with."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from brainbot.service.auth import mint
from tests.support.processes import PYTHONPATH, Service, start_service

SECRET = "test-identity-secret-" + "s" * 32
"""The HS256 secret the test front end signs identity tokens with."""


def bot_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """An environment for `brainbot serve` on the embedded KV in ``data_dir``, with rate
    limits high enough not to interfere (tests of the limits set their own)."""
    env = {
        "BRAINBOT_DATA_DIR": str(data_dir),
        "BRAINBOT_AUTH_JWT_SECRET": SECRET,
        "BRAINBOT_KV_KEY_WRITE_INTERVAL": "0",
        "BRAINBOT_RATE_SESSIONS": "10000/minute",
        "BRAINBOT_RATE_FAILED_AUTH_PER_ADDRESS": "10000/minute",
        "BRAINBOT_RATE_READS": "100000/minute",
        "BRAINBOT_RATE_WRITES": "100000/minute",
        "BRAINBOT_RATE_WRITES_PER_ADDRESS": "100000/minute",
        "PYTHONPATH": PYTHONPATH,
    }
    env.update(extra)
    return env


def bot_env_on_rest(
    data_dir: Path, server_url: str, api_token: str, **extra: str
) -> dict[str, str]:
    """``bot_env`` with the store on the REST client, against namespace ``live`` of the
    `brainbot kv serve` at ``server_url`` (one writer: no read-modify-write across processes)."""
    return bot_env(
        data_dir,
        CLOUDFLARE_ACCOUNT_ID="test-account",
        CLOUDFLARE_KV_NAMESPACE_ID="live",
        CLOUDFLARE_KV_API_TOKEN=api_token,
        CLOUDFLARE_API_BASE_URL=server_url,
        BRAINBOT_KV_SINGLE_WRITER="1",
        **extra,
    )


def start_bot(env: dict[str, str], **popen: object) -> Service:
    return start_service(
        [sys.executable, "-m", "brainbot", "serve", "--port", "0"],
        r"^READY (\S+)$",
        env=env,
        **popen,  # type: ignore[arg-type]
    )


def identity(user: str, **claims: object) -> str:
    return mint(SECRET, user, **claims)  # type: ignore[arg-type]


def login(http: httpx.Client, user: str) -> dict[str, str]:
    """Log ``user`` in; the headers that carry the session."""
    answer = http.post("/sessions", headers={"Authorization": f"Bearer {identity(user)}"})
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['session']}"}


def new_conversation(http: httpx.Client, auth: dict[str, str]) -> str:
    answer = http.post("/conversations", headers=auth)
    assert answer.status_code == 201, answer.text
    cid: str = answer.json()["conversation"]
    return cid
