"""`brainbot kv` as a person uses it, on the embedded store (the default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def brainbot(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    env["BRAINBOT_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "brainbot", *args],
            input=stdin,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )

    return run


def test_put_get_list_delete(brainbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert (
        brainbot(
            "kv", "put", "greeting", "hello é", "--ttl", "120", "--metadata", '{"t":"string"}'
        ).returncode
        == 0
    )
    got = brainbot("kv", "get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello é".encode())
    info = json.loads(brainbot("kv", "get", "greeting", "--json").stdout)
    assert info["value"] == "hello é"
    assert info["metadata"] == {"t": "string"}
    assert isinstance(info["expiration"], int)
    listed = brainbot("kv", "list").stdout.decode().splitlines()
    assert listed == [f'greeting\texpiration={info["expiration"]}\tmetadata={{"t": "string"}}']
    assert brainbot("kv", "delete", "greeting").returncode == 0
    assert brainbot("kv", "get", "greeting").returncode == 3
    assert (tmp_path / "data" / "kv" / "brainbot.sqlite3").exists()


def test_binary_file_round_trips_exactly(brainbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blob = bytes(range(256)) * 10
    (tmp_path / "blob.bin").write_bytes(blob)
    assert brainbot("kv", "put", "blob", "--file", str(tmp_path / "blob.bin")).returncode == 0
    assert brainbot("kv", "get", "blob").stdout == blob
    assert brainbot("kv", "put", "piped", "--file", "-", stdin=b"\x00\x01").returncode == 0
    assert brainbot("kv", "get", "piped").stdout == b"\x00\x01"
    assert json.loads(brainbot("kv", "get", "blob", "--json").stdout)["value_base64"]


def test_list_prefix_and_limit(brainbot) -> None:  # type: ignore[no-untyped-def]
    for key in ["user:1", "user:2", "chat:1"]:
        brainbot("kv", "put", key, "v")
    assert brainbot("kv", "list", "--prefix", "user:").stdout.decode().split() == [
        "user:1",
        "user:2",
    ]
    assert brainbot("kv", "list", "--limit", "1").stdout.decode().split() == ["chat:1"]


def test_list_shows_control_characters_escaped(brainbot) -> None:  # type: ignore[no-untyped-def]
    """Measured: a key named ``a<ESC>[31mred`` printed its escape raw (the terminal turned
    red; an ESC]... sequence can retitle it or worse), and a name with a tab or a line
    break broke the one-name-a-line output. ``--json`` keeps names exact."""
    names = ["a\x1b[31mred", "tab\there", "two\nlines", "rtl\u202eevil", "back\\slash"]
    meta = {"m": "\u202e", "c": 'say "hi"\nbye é'}
    for name in names:
        assert brainbot("kv", "put", name, "v", "--metadata", json.dumps(meta)).returncode == 0
    listed = brainbot("kv", "list").stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in listed] == [
        "a\\x1b[31mred",
        "back\\\\slash",
        "rtl\\u202eevil",
        "tab\\there",
        "two\\nlines",
    ]
    shown = [line.split("\tmetadata=")[1] for line in listed]
    assert all(json.loads(text) == meta for text in shown)  # valid JSON, as before
    assert all(text.isprintable() and "é" in text for text in shown)
    exact = [json.loads(line) for line in brainbot("kv", "list", "--json").stdout.splitlines()]
    assert [e["name"] for e in exact] == sorted(names, key=str.encode)
    assert exact[0]["metadata"] == meta


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["put", "k", "v", "--ttl", "30"], 2, "Expiration TTL must be at least 60"),
        (["put", "k" * 513, "v"], 2, "exceeds key length limit of 512"),
        (["put", "k", "v", "--metadata", "{bad"], 2, "--metadata is not valid JSON"),
        (["put", "k"], 2, "give either a VALUE or --file"),
        (["put", "k", "v", "--file", "x"], 2, "give either a VALUE or --file"),
        (["put", "k", "--file", "/nonexistent/file"], 2, "cannot read"),
        (["put", ".", "v"], 2, "Illegal key name"),
        (["get", "missing"], 3, "key not found"),
        (["list", "--limit", "0"], 2, "--limit must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(brainbot, args, code, message) -> None:  # type: ignore[no-untyped-def]
    done = brainbot("kv", *args)
    assert done.returncode == code
    assert message in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()
    assert brainbot("kv", "list").stdout == b""


def test_serve_announces_ready_and_refuses_bad_options(brainbot) -> None:  # type: ignore[no-untyped-def]
    done = brainbot("kv", "serve", "--error-rate", "1.5", "--token", "t")
    assert done.returncode == 2
    assert "error_rate must be between 0 and 1" in done.stderr.decode()


def test_auth_token_logs_in_to_a_local_serve(tmp_path: Path) -> None:
    import httpx

    from tests.support.service import start_bot

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "BRAINBOT_"))}
    env["BRAINBOT_DATA_DIR"] = str(tmp_path / "data")
    minted = subprocess.run(
        [sys.executable, "-m", "brainbot", "auth", "token", "--user", "alice"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.decode().strip()
    secret = tmp_path / "data" / "auth-secret"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert secret.read_text().strip() not in minted.stdout.decode() + minted.stderr.decode()
    bot = start_bot(env)
    try:
        with httpx.Client(base_url=bot.url, timeout=30) as http:
            login = http.post("/sessions", headers={"Authorization": f"Bearer {token}"})
            assert login.status_code == 201
            assert login.json()["user"] == "alice"
    finally:
        bot.stop()
    secret.chmod(0o644)  # readable by others: it would let them be anyone
    refused = subprocess.run(
        [sys.executable, "-m", "brainbot", "auth", "token", "--user", "alice"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert b"chmod 600" in refused.stderr


def test_migrate_explains_a_bad_source_url_and_pattern(brainbot) -> None:  # type: ignore[no-untyped-def]
    bad_port = brainbot("migrate", "--source", "redis://127.0.0.1:notaport/0")
    assert bad_port.returncode == 2
    assert b"Traceback" not in bad_port.stderr
    bad_pattern = brainbot(
        "migrate", "--source", "redis://127.0.0.1:1/0", "--conversation-pattern", "conv"
    )
    assert bad_pattern.returncode == 2
    assert b"{id}" in bad_pattern.stderr
    assert b"Traceback" not in bad_pattern.stderr


def test_messages_quoting_a_name_print_it_as_text(brainbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Measured: a key, file or namespace containing Rich markup (``[/x]``) crashed the
    message naming it with a MarkupError traceback (after ``put`` had stored the value),
    and ``--file`` printed a name's terminal escapes raw."""
    key = "[/x]a\x1b[31m"
    put = brainbot("kv", "put", key, "v")
    assert (put.returncode, put.stderr.decode()) == (0, "stored '[/x]a\\x1b[31m' (1 bytes)\n")
    assert brainbot("kv", "get", key).stdout == b"v"
    deleted = brainbot("kv", "delete", key)
    assert (deleted.returncode, deleted.stderr.decode()) == (0, "deleted '[/x]a\\x1b[31m'\n")
    missing = brainbot("kv", "get", key)
    assert missing.returncode == 3
    assert missing.stderr.decode() == "error: key not found: '[/x]a\\x1b[31m'\n"
    unreadable = brainbot("kv", "put", "k", "--file", str(tmp_path / "no[/x]\x1bdir" / "f"))
    assert unreadable.returncode == 2
    assert "no[/x]\\x1bdir" in unreadable.stderr.decode()
    served = brainbot("kv", "serve", "--token", "t", "--namespace", "[/x]")
    assert served.returncode == 2
    assert "Invalid namespace id '[/x]'" in served.stderr.decode()
    assert brainbot("kv", "list").stdout == b""


def _cli(
    cwd: Path, *args: str, drop: tuple[str, ...] = ("CLOUDFLARE_",), **variables: str
) -> subprocess.CompletedProcess[bytes]:
    """One ``brainbot`` command in a process of its own, run in ``cwd`` (where a ``.env``
    may be), with this environment less the variables starting with ``drop``, plus
    ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)} | variables
    return subprocess.run(
        [sys.executable, "-m", "brainbot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", ["../../escaped", "", "a/b", "tab\there", "é"])
def test_a_namespace_name_that_is_no_file_name_is_refused(tmp_path: Path, name: str) -> None:
    """Measured: ``BRAINBOT_KV_NAMESPACE=../../escaped`` created ``escaped.sqlite3`` two
    directories above the data directory's ``kv/`` and narrowed that directory to 0700."""
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    outside.chmod(0o755)
    done = _cli(
        tmp_path,
        "kv",
        "put",
        "k",
        "v",
        BRAINBOT_DATA_DIR=str(outside / "data"),
        BRAINBOT_KV_NAMESPACE=name,
    )
    assert done.returncode == 2
    assert b"BRAINBOT_KV_NAMESPACE" in done.stderr
    assert sorted(p.name for p in outside.rglob("*")) == ["data"]
    assert outside.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("env_file", "variables", "named"),
    [
        (b"BRAINBOT_KV_PREFIX=\xff\xfe\n", {}, b".env"),
        (b"BRAINBOT_KV_PREFIX=ok\nCLOUDFLARE_KV_API_TOKEN='tok-s3cr3t\n", {}, b".env line 2"),
        (b"", {"BRAINBOT_KV_BUSY_TIMEOUT": "inf"}, b"BRAINBOT_KV_BUSY_TIMEOUT"),
        (b"", {"BRAINBOT_KV_BUSY_TIMEOUT": "1e400"}, b"BRAINBOT_KV_BUSY_TIMEOUT"),
        (b"", {"CLOUDFLARE_API_BUDGET_WINDOW": "inf"}, b"CLOUDFLARE_API_BUDGET_WINDOW"),
        (b"", {"BRAINBOT_HEADER_TIMEOUT": "Infinity"}, b"BRAINBOT_HEADER_TIMEOUT"),
    ],
)
def test_a_settings_value_python_cannot_use_is_a_config_error(
    tmp_path: Path, env_file: bytes, variables: dict[str, str], named: bytes
) -> None:
    """Measured: a ``.env`` that is not UTF-8 ended in a UnicodeDecodeError traceback, and
    an infinite float (``inf``, ``1e400``: ``gt=0`` lets them through) in an
    OverflowError traceback where the embedded KV turned the timeout into milliseconds."""
    (tmp_path / ".env").write_bytes(env_file)
    done = _cli(
        tmp_path, "kv", "put", "k", "v", BRAINBOT_DATA_DIR=str(tmp_path / "data"), **variables
    )
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert named in done.stderr
    assert b"s3cr3t" not in done.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("args", "variables", "named"),
    [
        (["serve", "--port", "70000"], {}, b"--port"),
        (["kv", "serve", "--token", "t", "--port", "-1"], {}, b"--port"),
        (["kv", "serve", "--token", "t", "--data", "/dev/null/x"], {}, b"/dev/null/x"),
        (["kv", "serve", "--token", "t", "--slow-seconds", "inf"], {}, b"slow_seconds"),
        (["kv", "serve", "--token", "t", "--budget-window", "nan"], {}, b"budget_window"),
        (["kv", "serve", "--token", "t", "--header-timeout", "inf"], {}, b"--header-timeout"),
        (["serve", "--port", "0"], {"BRAINBOT_RESPONDER": "no_such_module:x"}, b"RESPONDER"),
        (["serve", "--port", "0"], {"BRAINBOT_RATE_WRITES": "0/minute"}, b"BRAINBOT_RATE_WRITES"),
        (["serve", "--port", "0"], {"BRAINBOT_ALLOWED_HOSTS": " , "}, b"BRAINBOT_ALLOWED_HOSTS"),
        (
            ["serve", "--port", "0"],
            {"BRAINBOT_FORWARDED_ALLOW_IPS": "10.0.0.1,not-an-ip"},
            b"BRAINBOT_FORWARDED_ALLOW_IPS",
        ),
        (["serve", "--port", "0"], {"BRAINBOT_RESPONDER": "brainbot:nothing"}, b"RESPONDER"),
        (
            ["serve", "--port", "0"],
            {"BRAINBOT_STORAGE_BACKEND": "redis", "BRAINBOT_REDIS_URL": "http://:pw-s3cr3t@h/0"},
            b"BRAINBOT_REDIS_URL",
        ),
        (
            ["serve", "--port", "0"],
            {"BRAINBOT_STORAGE_BACKEND": "dual", "BRAINBOT_REDIS_URL": "redis://:pw-s3cr3t@h:x/0"},
            b"BRAINBOT_REDIS_URL",
        ),
    ],
)
def test_servers_refuse_bad_options_and_settings_before_they_start(
    tmp_path: Path, args: list[str], variables: dict[str, str], named: bytes
) -> None:
    """Measured: each of these was a traceback (OverflowError from bind, FileExistsError or
    NotADirectoryError from mkdir, ModuleNotFoundError, AttributeError, redis-py's
    ValueError) instead of a message and exit 2."""
    data = str(tmp_path / "data")
    done = _cli(
        tmp_path, *args, drop=("CLOUDFLARE_", "BRAINBOT_"), BRAINBOT_DATA_DIR=data, **variables
    )
    assert done.returncode == 2, done.stderr.decode()[-300:]
    assert b"Traceback" not in done.stderr
    assert named in done.stderr
    assert b"s3cr3t" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("secret", "args", "named"),
    [
        ("short", [], b"at least 32 bytes"),
        ("s" * 32, ["--ttl", "86401"], b"--ttl"),
        ("s" * 32, ["--ttl", "999999999999999999999"], b"--ttl"),
    ],
)
def test_auth_token_refuses_what_serve_would_not_take(
    tmp_path: Path, secret: str, args: list[str], named: bytes
) -> None:
    """Measured: with a 5-byte BRAINBOT_AUTH_JWT_SECRET, ``auth token`` printed PyJWT's
    InsecureKeyLengthWarning and a token, which ``serve`` (at least 32 bytes) never takes;
    ``--ttl 999999999999999999999`` minted a token that never expires in practice (a leaked
    one logs in for ever): a day is the most now."""
    done = _cli(
        tmp_path,
        "auth",
        "token",
        "--user",
        "alice",
        *args,
        drop=("CLOUDFLARE_", "BRAINBOT_"),
        BRAINBOT_DATA_DIR=str(tmp_path / "data"),
        BRAINBOT_AUTH_JWT_SECRET=secret,
    )
    assert (done.returncode, done.stdout) == (2, b"")
    assert named in done.stderr
    assert b"Traceback" not in done.stderr
    assert secret.encode() not in done.stderr
