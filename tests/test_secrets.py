"""The API token never shows up in logs, reprs, exception texts or CLI output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback

import pytest

from brainbot.composition import cloudflare_credentials, open_namespace
from brainbot.config import Settings
from brainbot.kv import KVError, PutItem, RetryPolicy
from tests.support.kv import rest_client
from tests.support.processes import Service, free_port

SECRET = "s3cr3t-token-" + "x" * 24


def texts_of(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


async def test_token_stays_out_of_logs_reprs_and_errors(
    kv_server: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: httpx, httpcore, stamina, brainbot
    seen: list[str] = []
    async with rest_client(kv_server.url, SECRET, "ns", retry=RetryPolicy(attempts=2)) as kv:
        seen += [repr(kv), str(kv), repr(kv._http), repr(vars(kv))]
        for call in (
            kv.get("k"),
            kv.put("k", b"v", metadata={"a": 1}),
            kv.put_many([PutItem("a", b"v")]),
            kv.list(),
        ):
            with pytest.raises(KVError) as caught:  # the server does not know this token
                await call
            seen.append(texts_of(caught.value))
        with pytest.raises(KVError) as bad_input:
            await kv.put("x" * 600, b"v")
        seen.append(texts_of(bad_input.value))
    async with rest_client(
        f"http://127.0.0.1:{free_port()}/client/v4", SECRET, "ns", retry=RetryPolicy(attempts=2)
    ) as dead:
        with pytest.raises(KVError) as unreachable:
            await dead.get("k")
        seen.append(texts_of(unreachable.value))
    seen += [record.getMessage() + repr(record.args) for record in caplog.records]
    assert caplog.records, "debug logging captured nothing: the check would be empty"
    assert not [text for text in seen if SECRET in text]


def test_settings_do_not_print_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acc")
    monkeypatch.setenv("CLOUDFLARE_KV_NAMESPACE_ID", "ns")
    monkeypatch.setenv("CLOUDFLARE_KV_API_TOKEN", SECRET)
    settings = Settings()
    assert cloudflare_credentials(settings) is not None
    assert SECRET not in repr(settings) + str(settings) + str(settings.model_dump())
    assert SECRET not in repr(open_namespace(settings))


def test_cli_errors_do_not_print_the_token(kv_server: Service, tmp_path: object) -> None:
    env = {
        **os.environ,
        "CLOUDFLARE_ACCOUNT_ID": "acc",
        "CLOUDFLARE_KV_NAMESPACE_ID": "ns",
        "CLOUDFLARE_KV_API_TOKEN": SECRET,
        "CLOUDFLARE_API_BASE_URL": kv_server.url,
    }
    for args in (["get", "k"], ["put", "k", "v"], ["list"], ["put", "x" * 600, "v"]):
        done = subprocess.run(
            [sys.executable, "-m", "brainbot", "kv", *args],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode in (1, 2)
        assert b"error" in done.stderr
        assert SECRET.encode() not in done.stdout + done.stderr


def test_partial_cloudflare_settings_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from brainbot.errors import ConfigError

    monkeypatch.setenv("CLOUDFLARE_KV_API_TOKEN", SECRET)
    monkeypatch.delenv("CLOUDFLARE_ACCOUNT_ID", raising=False)
    monkeypatch.delenv("CLOUDFLARE_KV_NAMESPACE_ID", raising=False)
    with pytest.raises(
        ConfigError, match="CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_KV_NAMESPACE_ID"
    ) as caught:
        open_namespace(Settings())
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "token",
    [SECRET.replace("-", "\n", 1), SECRET + "\n", f" {SECRET}", SECRET.replace("-", "\x7f")],
)
def test_a_token_that_is_no_header_value_is_refused_unechoed(
    kv_server: Service, token: str
) -> None:
    """Measured: a token with a line break (a pasted file's) reached httpx, whose
    "Illegal header value b'Bearer <token>'" escaped the redaction (the repr shows ``\\n``,
    not the line break) and was printed after three retries."""
    env = {
        **os.environ,
        "CLOUDFLARE_ACCOUNT_ID": "acc",
        "CLOUDFLARE_KV_NAMESPACE_ID": "ns",
        "CLOUDFLARE_KV_API_TOKEN": token,
        "CLOUDFLARE_API_BASE_URL": kv_server.url,
    }
    done = subprocess.run(
        [sys.executable, "-m", "brainbot", "kv", "get", "k"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert b"CLOUDFLARE_KV_API_TOKEN" in done.stderr
    assert b"s3cr3t" not in done.stdout + done.stderr
