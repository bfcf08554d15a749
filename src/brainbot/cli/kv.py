"""``brainbot kv``: read and write the configured namespace by hand, or serve the local API.

Exit codes: 0 done, 1 the service failed (after retries), 2 bad input or configuration,
3 key not found. Errors name the problem, never a credential.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from brainbot.cli.common import (
    err,
    fail,
    handled,
    printable,
    read_secret_file,
    run,
    safe_name,
    settings,
)
from brainbot.composition import kv_serve_dir, open_namespace
from brainbot.kv.faults import Faults
from brainbot.kv.namespace import KVNamespace, iter_keys

T = TypeVar("T")
kv_app = typer.Typer(help="Read and write the configured KV namespace (embedded by default).")


def _run(work: Callable[[KVNamespace], Awaitable[T]]) -> T:
    config = settings()

    async def go() -> T:
        async with open_namespace(config) as kv:
            return await work(kv)

    return run(go())


@kv_app.command()
def get(
    key: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print value, expiration and metadata as JSON.")
    ] = False,
) -> None:
    """Print the value of KEY (raw bytes, exactly as stored)."""
    entry = _run(lambda kv: kv.get(key))
    if entry is None:
        fail(f"key not found: {escape(repr(key))}", 3)
    if as_json:
        try:
            value: dict[str, Any] = {"value": entry.value.decode("utf-8")}
        except UnicodeDecodeError:
            value = {"value_base64": base64.b64encode(entry.value).decode("ascii")}
        print(
            json.dumps(
                {"key": key, **value, "expiration": entry.expiration, "metadata": entry.metadata},
                ensure_ascii=False,
            )
        )
        return
    sys.stdout.buffer.write(entry.value)
    if sys.stdout.isatty():
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


@kv_app.command()
def put(
    key: str,
    value: Annotated[str | None, typer.Argument(help="The value (or use --file).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the value from a file ('-': stdin).")
    ] = None,
    ttl: Annotated[int | None, typer.Option(help="Expire after this many seconds (>= 60).")] = None,
    expiration: Annotated[
        int | None, typer.Option(help="Expire at this epoch second (>= 60 s ahead).")
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="JSON metadata (<= 1,024 bytes).")] = None,
) -> None:
    """Store VALUE (or the content of --file) under KEY."""
    if (value is None) == (file is None):
        fail("give either a VALUE or --file, exactly one of them", 2)
    if file is not None:
        try:
            data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
        except OSError as exc:
            fail(f"cannot read {safe_name(str(file))}: {safe_name(str(exc.strerror))}", 2)
    else:
        assert value is not None
        data = value.encode("utf-8")
    meta = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError as exc:
            fail(f"--metadata is not valid JSON: {safe_name(str(exc))}", 2)
    _run(lambda kv: kv.put(key, data, expiration=expiration, expiration_ttl=ttl, metadata=meta))
    err.print(f"stored {escape(repr(key))} ({len(data)} bytes)")


@kv_app.command()
def delete(key: str) -> None:
    """Delete KEY (deleting a missing key succeeds)."""
    _run(lambda kv: kv.delete(key))
    err.print(f"deleted {escape(repr(key))}")


@kv_app.command("list")
def list_keys(
    prefix: Annotated[str, typer.Option(help="Only names starting with this.")] = "",
    limit: Annotated[int | None, typer.Option(help="Stop after this many names.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line: names exactly as stored.")
    ] = False,
) -> None:
    """List names (with expiration and metadata when set), in UTF-8 byte order. A name's
    control and non-printable characters (terminal escapes, tabs, line breaks) are shown
    escaped (``\\x1b``, a backslash as ``\\\\``); ``--json`` gives them exactly."""
    if limit is not None and limit < 1:
        fail("--limit must be at least 1", 2)

    async def work(kv: KVNamespace) -> int:
        shown = 0
        async for info in iter_keys(kv, prefix=prefix):
            if as_json:
                fields = {"name": info.name, "expiration": info.expiration}
                print(json.dumps(fields | {"metadata": info.metadata}))
            else:
                extra = []
                if info.expiration is not None:
                    extra.append(f"expiration={info.expiration}")
                if info.metadata is not None:
                    extra.append("metadata=" + _json_text(info.metadata))
                print("\t".join([printable(info.name), *extra]))
            shown += 1
            if limit is not None and shown >= limit:
                break
        return shown

    count = _run(work)
    err.print(f"{count} key(s)")


def _json_text(value: object) -> str:
    """``value`` as JSON on one line, readable (``é`` stays) but terminal-safe: what is not
    printable (bidi overrides, C1 controls, lone surrogates) as JSON's own ``\\u`` escapes,
    so the text stays valid JSON (``printable`` would double its backslashes)."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


SERVE_TOKEN_ENV = "BRAINBOT_KV_SERVE_TOKEN"  # noqa: S105 (a variable name, not a secret)


def _serve_token(data_dir: Path, given: str | None, token_file: Path | None) -> str:
    """The token: from --token (with a warning), the environment, --token-file, or
    DATA/serve-token (``local_secret``: read if it is a private regular file, refused if a
    symlink or readable by others, else created exclusively, 0600)."""
    sources = [s for s in (given, os.environ.get(SERVE_TOKEN_ENV), token_file) if s]
    if len(sources) > 1:
        fail(f"give the token one way: --token, {SERVE_TOKEN_ENV} or --token-file", 2)
    if given:
        err.print(f"warning: --token is visible to every local user in `ps`; use {SERVE_TOKEN_ENV}")
        return given
    if os.environ.get(SERVE_TOKEN_ENV):
        return os.environ[SERVE_TOKEN_ENV]
    if token_file is not None:
        return read_secret_file(str(token_file), "--token-file")
    path = data_dir / "serve-token"
    created = not os.path.lexists(path)
    from brainbot.service.auth import local_secret  # (with its JWT stack: only here)

    with handled():
        token = local_secret(path)
    if created:
        err.print(f"no token given: generated one in {safe_name(str(path))} (mode 0600)")
    return token


@kv_app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).", min=0, max=65535)] = 8787,
    data: Annotated[
        Path | None, typer.Option(help="Data directory (default: $BRAINBOT_DATA_DIR/kv-serve).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="Bearer token clients must send. Visible to every local user in `ps`: "
            "prefer BRAINBOT_KV_SERVE_TOKEN or --token-file (without any, a random one is "
            "written to DATA/serve-token, mode 0600).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="A file (not readable by group or others) holding the token."),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(
            help="The account id this server answers for (others: 403); printed with READY. "
            "Default: 0123456789abcdef0123456789abcdef.",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        list[str] | None,
        typer.Option(help="A namespace id to have from the start (repeatable)."),
    ] = None,
    auto_create_namespaces: Annotated[
        bool,
        typer.Option(help="Create a namespace on its first use (tests); else unknown: 10013."),
    ] = False,
    max_open: Annotated[
        int, typer.Option(help="Namespaces open at once (least recently used closed).", min=1)
    ] = 64,
    header_timeout: Annotated[
        float,
        typer.Option(help="Seconds a client has to send a request's headers.", min=0.1),
    ] = 10.0,
    max_connections: Annotated[
        int, typer.Option(help="Connections at once; beyond, 503 at once.", min=1)
    ] = 1000,
    error_rate: Annotated[float, typer.Option(help="Share of requests answered 429/5xx.")] = 0.0,
    error_429_share: Annotated[
        float, typer.Option(help="Of those errors, the share that are 429 (rest: 5xx).")
    ] = 0.5,
    retry_after: Annotated[float, typer.Option(help="Retry-After of injected 429s (s).")] = 1.0,
    slow_rate: Annotated[float, typer.Option(help="Share of requests answered slowly.")] = 0.0,
    slow_seconds: Annotated[float, typer.Option(help="Delay of a slow answer (s).")] = 0.0,
    bulk_failure_rate: Annotated[
        float, typer.Option(help="Share of bulk-write keys reported unsuccessful.")
    ] = 0.0,
    budget: Annotated[
        int | None, typer.Option(help="Requests allowed per --budget-window, then lockout.")
    ] = None,
    budget_window: Annotated[float, typer.Option(help="Budget window (s).")] = 300.0,
    list_lag: Annotated[float, typer.Option(help="Seconds list results trail writes.")] = 0.0,
    key_write_limit: Annotated[
        bool, typer.Option(help="Refuse a 2nd write of one key within 1 s (429), as Cloudflare.")
    ] = False,
    bulk_latency: Annotated[
        float, typer.Option(help="Seconds added to every bulk request (a far-away API).")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the fault dice.")] = None,
    test_clock: Annotated[
        bool, typer.Option(help="Accept POST /__brainbot/clock to advance time (tests only).")
    ] = False,
) -> None:
    """Serve Cloudflare's KV REST API on the embedded KV; prints 'READY <base-url>'."""
    if not math.isfinite(header_timeout):
        fail("--header-timeout must be a finite number of seconds.", 2)
    data_dir = data if data is not None else kv_serve_dir(settings())
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # a file, a path under a file, no permission
        fail(f"cannot create {safe_name(str(data_dir))}: {safe_name(str(exc.strerror))}", 2)
    token = _serve_token(data_dir, token, token_file)
    try:
        faults = Faults(
            error_rate=error_rate,
            error_429_share=error_429_share,
            retry_after=retry_after,
            slow_rate=slow_rate,
            slow_seconds=slow_seconds,
            bulk_failure_rate=bulk_failure_rate,
            budget=budget,
            budget_window=budget_window,
            list_lag=list_lag,
            key_write_limit=key_write_limit,
            bulk_latency=bulk_latency,
            seed=seed,
        )
    except ValueError as exc:
        fail(safe_name(str(exc)), 2)
    from brainbot.kv.local_server import (  # only this command needs it
        LOCAL_ACCOUNT,
        LocalKVServer,
        serve,
    )

    try:
        server = LocalKVServer(
            data_dir=data_dir,
            token=token,
            faults=faults,
            test_clock=test_clock,
            account_id=account or LOCAL_ACCOUNT,
            namespaces=tuple(namespace or ()),
            auto_create=auto_create_namespaces,
            max_open=max_open,
        )
    except ValueError as exc:
        fail(safe_name(str(exc)), 2)
    try:
        with handled():
            asyncio.run(
                serve(
                    server,
                    host=host,
                    port=port,
                    header_timeout=header_timeout,
                    max_connections=max_connections,
                )
            )
    except OSError as exc:
        fail(f"cannot listen on {safe_name(host)}:{port}: {safe_name(str(exc.strerror))}", 2)
    except KeyboardInterrupt:
        pass
