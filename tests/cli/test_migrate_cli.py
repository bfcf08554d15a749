"""``brainbot migrate``/``verify``/``rollback`` on the console: the source's password kept
out of argv and out of every output, invalid databases refused before any connection, key
names (and anything else quoted from the data) escaped on every console line.

The library calls are replaced by recorders here (what the CLI hands them is the point);
runs against a real redis-server are in tests/migration.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.errors import MarkupError
from typer.testing import CliRunner

from brainbot.cli import app
from brainbot.cli.common import safe_name
from brainbot.errors import MigrationError, RedisUnavailable
from brainbot.kv.errors import KVTransportError
from brainbot.migration import Difference, Report, RollbackReport, VerifyReport

migrate_cli = importlib.import_module("brainbot.cli.migrate")  # (brainbot.cli.migrate: a function)

SECRET = "s3cr3t-Pa55"
RUN_ID = "20240101T000000Z-abcdef"


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on: bound, never listening, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An embedded store in ``tmp_path``, no Cloudflare, no password in the environment."""
    for name in list(os.environ):
        if name.startswith("CLOUDFLARE_") or name in (
            "BRAINBOT_SOURCE_PASSWORD",
            "BRAINBOT_RESTORE_PASSWORD",
            "BRAINBOT_KV_PREFIX",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BRAINBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


class Recorder:
    """Stands in for a library call: records its arguments, then raises or answers."""

    def __init__(self, *, answer: Any = None, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.answer


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not an exit code: show it
    return result


def flat(text: str) -> str:
    """Console text with Rich's line wrapping undone."""
    return " ".join(text.split())


def refused() -> RedisUnavailable:
    return RedisUnavailable("Redis: ConnectionError: Connection refused.")


# -- invalid databases: exit 2 before anything connects -----------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "--source", f"redis://:{SECRET}@127.0.0.1:{{port}}/notanint"],
        ["migrate", "--dry-run", "--source", "redis://127.0.0.1:{port}/1?db=2"],
        ["verify", "--source", "redis://127.0.0.1:{port}/0?db=x"],
        ["rollback", RUN_ID, "--restore-to", f"redis://:{SECRET}@127.0.0.1:{{port}}/-1"],
    ],
)
def test_an_invalid_database_is_refused_before_any_connection(
    args: list[str], closed_port: int, tmp_path: Path
) -> None:
    """Today ``redis://host/notanint`` migrates database 0. A connection attempt to the
    closed port would end in exit 1 (Redis unavailable): exit 2 proves none was made."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    env |= {"BRAINBOT_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "brainbot", *(a.format(port=closed_port) for a in args)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 2, out
    assert "source URL" in done.stderr.decode()  # (tmp_path holds "database")
    assert "database" in done.stderr.decode()
    assert "Traceback" not in out
    assert "refused" not in out.lower()
    assert SECRET not in out
    assert not (tmp_path / "data" / "migrations").exists()  # no run was started


# -- the password outside the URL: a file (0600) or the environment ----------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_password_file_others_can_read_is_refused(
    mode: int, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = Recorder(error=refused())
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", library)
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(mode)
    result = invoke(
        "migrate",
        "--source",
        "redis://127.0.0.1:1/0",
        "--source-password-file",
        str(secret_file),
    )
    assert result.exit_code == 2
    assert "readable by group or others" in flat(result.stderr)
    assert "chmod 600" in flat(result.stderr)
    assert SECRET not in result.output
    assert library.calls == []


def test_a_missing_or_empty_password_file_is_refused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate_cli, "verify", Recorder(error=refused()))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    for path, message in [(empty, "is empty"), (tmp_path / "nope", "cannot read")]:
        result = invoke("verify", "--source", "redis://h/0", "--source-password-file", str(path))
        assert (result.exit_code, message in flat(result.stderr)) == (2, True), result.output


def test_the_password_file_reaches_the_library_not_the_console(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = Recorder(error=refused())
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", library)
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    result = invoke(
        "migrate",
        "--source",
        "redis://default:@127.0.0.1:1/0",  # a user name, no password
        "--source-password-file",
        str(secret_file),
    )
    assert result.exit_code == 1  # the library's "Redis unavailable"
    assert "Connection refused" in result.stderr
    ((source, *_), kwargs) = library.calls[0]
    assert (source, kwargs["source_password"]) == ("redis://default:@127.0.0.1:1/0", SECRET)
    assert "warning" not in result.stderr
    assert SECRET not in result.output


def test_the_environment_variable_reaches_each_command(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate_call, verify_call = Recorder(error=refused()), Recorder(error=refused())
    rollback_call = Recorder(error=refused())
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", migrate_call)
    monkeypatch.setattr(migrate_cli, "verify", verify_call)
    monkeypatch.setattr(migrate_cli, "rollback", rollback_call)
    env = {"BRAINBOT_SOURCE_PASSWORD": SECRET, "BRAINBOT_RESTORE_PASSWORD": SECRET + "-r"}
    results = [
        invoke("migrate", "--source", "redis://127.0.0.1:1/0", env=env),
        invoke("verify", "--source", "redis://127.0.0.1:1/0", env=env),
        invoke("rollback", RUN_ID, "--restore-to", "redis://127.0.0.1:1/0", env=env),
    ]
    assert [r.exit_code for r in results] == [1, 1, 1]
    assert migrate_call.calls[0][1]["source_password"] == SECRET
    assert verify_call.calls[0][1]["source_password"] == SECRET
    assert rollback_call.calls[0][1]["restore_password"] == SECRET + "-r"
    for result in results:
        assert "warning" not in result.stderr
        assert SECRET not in result.output


def test_the_password_is_given_one_way_only(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = Recorder(error=refused())
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", library)
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    result = invoke(
        "migrate",
        "--source",
        "redis://127.0.0.1:1/0",
        "--source-password-file",
        str(secret_file),
        env={"BRAINBOT_SOURCE_PASSWORD": SECRET},
    )
    assert result.exit_code == 2
    assert "not both" in result.stderr
    assert library.calls == []


# -- a password in the URL: it works, with a warning; never shown -------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:1/0",
        f"redis://{SECRET}@127.0.0.1:1/0",
        f"rediss://default:{SECRET}@127.0.0.1:1/2",
        f"redis://127.0.0.1:1/0?password={SECRET}",
    ],
)
@pytest.mark.parametrize("command", ["migrate", "verify"])
def test_a_password_in_the_url_works_with_a_warning(
    url: str, command: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = Recorder(error=refused())
    name = "migrate_redis_to_kv" if command == "migrate" else "verify"
    monkeypatch.setattr(migrate_cli, name, library)
    result = invoke(command, "--source", url)
    assert result.exit_code == 1
    ((source, *_), kwargs) = library.calls[0]
    assert (source, kwargs["source_password"]) == (url, None)  # the library reads the URL's
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1  # one line, not wrapped
    assert "visible to every local user in the process list" in warnings[0]
    assert "BRAINBOT_SOURCE_PASSWORD" in warnings[0]
    assert "--source-password-file" in warnings[0]
    assert SECRET not in result.output


def test_a_password_in_the_restore_url_warns_too(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = Recorder(answer=RollbackReport(RUN_ID, redis_restored=3, redis_expired=1))
    monkeypatch.setattr(migrate_cli, "rollback", library)
    result = invoke("rollback", RUN_ID, "--restore-to", f"redis://:{SECRET}@127.0.0.1:1/0")
    assert result.exit_code == 0, result.output
    assert library.calls[0][1]["restore_to"] == f"redis://:{SECRET}@127.0.0.1:1/0"
    assert library.calls[0][1]["restore_password"] is None
    assert "BRAINBOT_RESTORE_PASSWORD" in result.stderr
    assert "restored 3 Redis keys into redis://:***@127.0.0.1:1/0" in flat(result.stderr)
    assert SECRET not in result.output


def test_the_migration_report_shows_the_source_redacted(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the library's report carries the URL as given (as today's does for
    ``?password=``), the console and the JSON on stdout show it redacted."""
    url = f"redis://127.0.0.1:1/0?password={SECRET}"
    report = Report(
        run_id=RUN_ID,
        source=url,
        dry_run=False,
        keys_seen=3,
        migrated=Counter({"string/\x1b[31mplain": 1}),
        kv_entries=1,
        entries=Counter({"written": 1}),
        skipped=Counter({"key refused by KV: weird:[/nonexistent]": 1}),
        notes=Counter({"[bold]note[/bold]": 1}),
        seconds=0.1,
        verify_differences=0,
    )
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", Recorder(answer=report))
    result = invoke("migrate", "--source", url)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert json.loads(result.stdout)["source"] == "redis://127.0.0.1:1/0?password=***"
    shown = flat(result.stderr)
    assert "redis://127.0.0.1:1/0?password=***" in shown
    assert "\x1b[31m" not in result.stderr
    assert "string/\\x1b[31mplain" in shown
    assert "weird:[/nonexistent]" in shown
    assert "[bold]note[/bold]" in shown


# -- key names on the console ---------------------------------------------------------------

NASTY_KEYS = [
    "\x1b[31mred",
    "weird:[/nonexistent]",
    "bidi\u202eevil",
    "two\nlines",
    "cache:soon:1",  # Rich would print an emoji for ":soon:"
]


def test_verify_prints_every_key_name_escaped(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today ``weird:[/nonexistent]`` crashes verify with Rich's MarkupError and the
    terminal escapes go to the terminal raw."""
    report = VerifyReport(
        checked=5, differences=[Difference(k, f"message {k}/1 differs") for k in NASTY_KEYS]
    )
    monkeypatch.setattr(migrate_cli, "verify", Recorder(answer=report))
    result = invoke("verify", "--source", "redis://127.0.0.1:1/0")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("DIFF")]
    assert lines == [
        f"DIFF {escaped}: message {escaped}/1 differs"
        for escaped in [
            "\\x1b[31mred",
            "weird:[/nonexistent]",
            "bidi\\u202eevil",
            "two\\nlines",
            "cache:soon:1",
        ]
    ]
    for raw in ("\x1b", "\u202e"):
        assert raw not in result.stderr
    assert [d["key"] for d in json.loads(result.stdout)["differences"]] == NASTY_KEYS


def test_an_error_quoting_a_key_name_is_printed_escaped(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = MigrationError("Redis: ResponseError on weird:[/nonexistent] \x1b[2J")
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", Recorder(error=error))
    result = invoke("migrate", "--source", "redis://127.0.0.1:1/0")
    assert result.exit_code == 1
    assert "Redis: ResponseError on weird:[/nonexistent] \\x1b[2J" in flat(result.stderr)
    assert "\x1b" not in result.stderr


def test_rollback_prints_the_run_id_escaped(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = RollbackReport(RUN_ID, kv_deleted=2)
    monkeypatch.setattr(migrate_cli, "rollback", Recorder(answer=answer))
    result = invoke("rollback", "run\x1b[2J[/x]", "--delete-kv")
    assert result.exit_code == 0, result.output
    assert "run run\\x1b[2J[/x]: deleted 2 KV entries" in flat(result.stderr)
    assert "\x1b" not in result.stderr


def render(markup: str) -> str:
    console = Console(file=io.StringIO(), width=500, highlight=False, color_system=None)
    console.print(markup, soft_wrap=True)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().removesuffix("\n")


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("\x1b[31mred", "\\x1b[31mred"),
        ("weird:[/nonexistent]", "weird:[/nonexistent]"),
        ("[bold]b[/bold]", "[bold]b[/bold]"),
        ("a\\[red]b", "a\\\\[red]b"),
        ("ends with \\", "ends with \\\\"),
        ("tab\tnl\ncr\r", "tab\\tnl\\ncr\\r"),
        ("bidi\u202eevil\u00a0nbsp", "bidi\\u202eevil\\xa0nbsp"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("not utf-8 \udcff", "not utf-8 \\udcff"),
        ("émoji 🙂 中文 ok", "émoji 🙂 中文 ok"),
    ],
)
def test_safe_name(name: str, shown: str) -> None:
    assert render(f"[red]DIFF[/] {safe_name(name)}: x") == f"DIFF {shown}: x"
    assert all(c.isprintable() for c in safe_name(name))


def test_safe_name_is_what_keeps_rich_from_crashing() -> None:
    with pytest.raises(MarkupError):
        render("[red]DIFF[/] weird:[/nonexistent]: x")
    assert render(f"[red]DIFF[/] {safe_name('weird:[/nonexistent]')}: x") == (
        "DIFF weird:[/nonexistent]: x"
    )


# -- end to end, as a process ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["url", "environment"])
def test_no_password_in_any_output_of_a_failing_run(
    how: str, closed_port: int, tmp_path: Path
) -> None:
    """The library is really called: the source is unreachable, the run fails cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    env |= {"BRAINBOT_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300"}
    url = f"redis://127.0.0.1:{closed_port}/0"
    if how == "url":
        url = f"redis://:{SECRET}@127.0.0.1:{closed_port}/0"
    else:
        env["BRAINBOT_SOURCE_PASSWORD"] = SECRET
    done = subprocess.run(
        [sys.executable, "-m", "brainbot", "migrate", "--source", url, "--no-verify"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert SECRET not in out
    assert ("warning:" in done.stderr.decode()) == (how == "url")


def test_overwrite_and_in_flight_reach_the_library(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--overwrite`` is off unless asked for (a second run never replaces live data);
    ``--in-flight`` bounds the bulk writes in flight."""
    report = Report(run_id=RUN_ID, source="redis://127.0.0.1:1/0", dry_run=False)
    recorder = Recorder(answer=report)
    monkeypatch.setattr(migrate_cli, "migrate_redis_to_kv", recorder)
    assert invoke("migrate", "--source", "redis://127.0.0.1:1/0").exit_code == 0
    assert recorder.calls[-1][1]["overwrite"] is False
    assert recorder.calls[-1][1]["in_flight"] == 8
    args = ("--overwrite", "--in-flight", "3")
    assert invoke("migrate", "--source", "redis://127.0.0.1:1/0", *args).exit_code == 0
    assert recorder.calls[-1][1]["overwrite"] is True
    assert recorder.calls[-1][1]["in_flight"] == 3
    refused_run = invoke("migrate", "--source", "redis://127.0.0.1:1/0", "--in-flight", "0")
    assert refused_run.exit_code == 2


@pytest.mark.parametrize("command", ["migrate", "verify"])
def test_bulk_commands_tune_the_garbage_collector(
    command: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk commands raise the collector's thresholds (``migration.heap``): with the
    defaults, full collections over the batches in flight took a quarter of the CPU."""
    import gc

    from brainbot.migration.heap import BULK_THRESHOLDS

    answer: Any = (
        Report(run_id=RUN_ID, source="redis://127.0.0.1:1/0", dry_run=False)
        if command == "migrate"
        else VerifyReport()
    )
    monkeypatch.setattr(
        migrate_cli,
        {"migrate": "migrate_redis_to_kv"}.get(command, command),
        Recorder(answer=answer),
    )
    gc.set_threshold(700, 10, 10)  # (conftest puts back what it found)
    assert invoke(command, "--source", "redis://127.0.0.1:1/0").exit_code == 0
    assert gc.get_threshold() == BULK_THRESHOLDS


def test_verify_checks_a_short_ttl_skip_migration_as_it_ran(data_dir: Path, redis_url: str) -> None:
    """Before: ``verify`` always planned with ``--short-ttl clamp``, so after a migration
    that skipped the keys with under 60 s left it called each of them missing."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        client.set("g:soon", "v", ex=40)
        client.set("g:later", "v", ex=3600)
        migrated = invoke("migrate", "--source", redis_url, "--short-ttl", "skip")
        assert migrated.exit_code == 0, migrated.stderr
        assert json.loads(migrated.stdout)["skipped"] == {"under 60 s left (policy: skip)": 1}
        assert invoke("verify", "--source", redis_url, "--short-ttl", "skip").exit_code == 0
        default = invoke("verify", "--source", redis_url)
        assert default.exit_code == 1
        assert "g:soon: missing in KV" in flat(default.stderr)
    finally:
        client.flushdb()
        client.close()


def test_every_command_says_a_retry_in_one_line(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """stamina's own hook put the retry's details in ``extra``: the console showed a bare
    ``stamina.retry_scheduled``. The command's hook names the error's type, not its text."""
    import stamina.instrumentation
    from stamina.instrumentation import RetryDetails

    invoke("rollback", "20261127T120000Z-abcdef", "--delete-kv")  # any command
    (hook,) = stamina.instrumentation.get_on_retry_hooks()
    error = KVTransportError("connect to https://api.example/keys/secret-key failed")
    hook(RetryDetails("put_many", (), {}, 2, 1.25, 0.5, error))
    assert caplog.messages == ["KV request failed (KVTransportError): retry 2 in 1.2 s"]
