"""``brainbot migrate``, ``brainbot verify`` and ``brainbot rollback``.

The source URL is validated before anything connects (``SourceURL``) and shown redacted
everywhere. Its password is better given outside the URL, which every local user can read
in the process list: ``BRAINBOT_SOURCE_PASSWORD`` or ``--source-password-file`` (mode 0600)
(``BRAINBOT_RESTORE_PASSWORD`` / ``--restore-password-file`` for ``rollback --restore-to``);
a URL that holds one still works, with a warning. Both are read here and handed to the
library as ``source_password`` / ``restore_password``. Every key name, URL, run id and
message printed on the console goes through ``safe_name`` (control characters as escapes,
Rich markup escaped). Exit codes: 0 done (and verified), 1 differences found or the run
stopped (resume with --resume), 2 bad input or configuration, 3 not found.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from brainbot.cli.common import fail, handled, read_secret_file, safe_name, settings
from brainbot.composition import bulk_process, migration_runs, open_namespace
from brainbot.config import Settings
from brainbot.migration import Options, migrate_redis_to_kv, rollback, verify
from brainbot.migration.heap import tune_for_bulk
from brainbot.migration.url import SourceURL
from brainbot.migration.verify import MAX_LANES

T = TypeVar("T")
console = Console(stderr=True, highlight=False, emoji=False)  # key names: no ":x:" emoji

SOURCE_PASSWORD_ENV = "BRAINBOT_SOURCE_PASSWORD"  # noqa: S105 (a name, not a password)
RESTORE_PASSWORD_ENV = "BRAINBOT_RESTORE_PASSWORD"  # noqa: S105

Source = Annotated[
    str,
    typer.Option(
        "--source",
        help="redis:// or rediss:// URL (db in the path); its password is better given in "
        f"{SOURCE_PASSWORD_ENV} or --source-password-file.",
    ),
]
SourcePasswordFile = Annotated[
    str | None,
    typer.Option(
        "--source-password-file",
        help="A file (not readable by group or others) holding the source's password.",
    ),
]
Match = Annotated[str | None, typer.Option(help="Only keys matching this SCAN pattern.")]
Type = Annotated[str | None, typer.Option("--type", help="Only keys of this Redis type.")]
TLSCA = Annotated[
    str | None, typer.Option(help="CA file to trust for rediss:// (test certificates).")
]
Lanes = Annotated[
    int | None,
    typer.Option(
        help="Processes reading the source for verify (default: one per CPU, at most 4, "
        "for 50,000 keys or more; 1: this process only).",
        min=1,
        max=MAX_LANES,
    ),
]
ConversationPattern = Annotated[str, typer.Option(help="Legacy conversation lists.")]
SessionPattern = Annotated[str, typer.Option(help="Legacy session strings.")]
OwnerPattern = Annotated[str, typer.Option(help="Legacy sets of a user's conversation ids.")]


def _run(work: Coroutine[Any, Any, T]) -> T:
    tune_for_bulk()  # this process does nothing else from here on
    with handled():
        return asyncio.run(work)
    raise AssertionError("unreachable")  # pragma: no cover


def _password(file: str | None, env: str, option: str) -> str | None:
    """The password given outside the URL: in the environment variable ``env`` or in the
    file of ``option``, not both; ``None`` when neither (an empty variable counts as unset)."""
    from_env = os.environ.get(env) or None
    if file is not None and from_env is not None:
        fail(f"give the password either in {env} or with {option}, not both", 2)
    return read_secret_file(file, option) if file is not None else from_env


def _url(url: str, password: str | None, *, option: str, env: str, file_option: str) -> SourceURL:
    """``url`` validated (exit 2 before anything connects); a warning when it holds a
    password, which every local user can read in the process list while the command runs."""
    with handled():
        parsed = SourceURL.parse(url, password=password)
    if parsed.has_password_in_url:
        console.print(
            f"[yellow]warning:[/] the password in {option} is visible to every local user in "
            f"the process list (ps); give it in {env} or with {file_option} instead.",
            soft_wrap=True,
        )
    return parsed


def _source(url: str, password_file: str | None) -> tuple[SourceURL, str | None]:
    """The validated ``--source`` and the password given outside it (``None``: none)."""
    password = _password(password_file, SOURCE_PASSWORD_ENV, "--source-password-file")
    parsed = _url(
        url,
        password,
        option="--source",
        env=SOURCE_PASSWORD_ENV,
        file_option="--source-password-file",
    )
    return parsed, password


ShortTTL = Annotated[
    str,
    typer.Option(help="Keys with < 60 s left: clamp or skip (verify: as the migration did)."),
]


def _options(
    settings: Settings, conversation: str, session: str, owner: str, short_ttl: str
) -> Options:
    if short_ttl not in ("clamp", "skip"):
        fail("--short-ttl must be clamp or skip", 2)
    with handled():  # a bad pattern is refused here, before anything is read
        return Options(
            prefix=settings.kv_prefix,
            conversation_pattern=conversation,
            session_pattern=session,
            owner_pattern=owner,
            short_ttl=short_ttl,  # type: ignore[arg-type]
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _report_table(report: Any, source: SourceURL) -> Table:
    table = Table(title=f"migration {safe_name(str(report.run_id))} of {safe_name(str(source))}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("keys seen", str(report.keys_seen))
    for kind, n in sorted(report.migrated.items()):
        table.add_row(f"migrated {safe_name(str(kind))}", str(n))
    table.add_row("KV entries planned", str(report.kv_entries))
    for outcome, n in sorted(report.entries.items()):
        table.add_row(f"entries {safe_name(str(outcome))}", str(n))
    for reason, n in sorted(report.skipped.items()):
        table.add_row(f"skipped: {safe_name(str(reason))}", str(n))
    for note, n in sorted(report.notes.items()):
        table.add_row(f"note: {safe_name(str(note))}", str(n))
    table.add_row("API requests", str(report.api_requests))
    table.add_row("bulk writes", str(report.bulk_writes))
    table.add_row("seconds", f"{report.seconds:.1f}")
    if report.verify_differences is not None:
        table.add_row("verify: differences", str(report.verify_differences))
    return table


def migrate(
    source: Source,
    match: Match = None,
    type_: Type = None,
    dry_run: Annotated[bool, typer.Option(help="Plan and count; write nothing.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the last unfinished run.")] = False,
    short_ttl: ShortTTL = "clamp",
    conversation_pattern: ConversationPattern = "conversation:{id}",
    session_pattern: SessionPattern = "session:{id}",
    owner_pattern: OwnerPattern = "user:{id}:conversations",
    tls_ca_file: TLSCA = None,
    source_password_file: SourcePasswordFile = None,
    verify_after: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    lanes: Lanes = None,
    scan_count: Annotated[int, typer.Option(help="SCAN COUNT per batch.", min=10)] = 1000,
    batch_entries: Annotated[
        int, typer.Option(help="KV entries per write and checkpoint.", min=1, max=10_000)
    ] = 10_000,
    in_flight: Annotated[
        int,
        typer.Option(help="Bulk writes in flight at once (within the API budget).", min=1, max=32),
    ] = 8,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Also replace KV entries changed since (or not written by) this migration, "
            "after backing each up to the run's kv-backup.jsonl.gz."
        ),
    ] = False,
) -> None:
    """Migrate Redis/Upstash into the configured KV namespace (embedded by default)."""
    url, password = _source(source, source_password_file)
    config = bulk_process(settings())
    options = _options(config, conversation_pattern, session_pattern, owner_pattern, short_ttl)
    with Progress(
        TextColumn("[bold]migrating[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} keys/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("migrate", total=None, rate="-")

        def progress(done: int, total: int | None) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, rate=f"{speed:,.0f}" if speed else "-")

        async def work() -> Any:
            async with open_namespace(config, purpose="bulk") as kv:  # verify uses it too
                return await migrate_redis_to_kv(
                    source,
                    namespace=kv,
                    runs=migration_runs(config),
                    options=options,
                    match=match,
                    type_=type_,
                    dry_run=dry_run,
                    resume=resume,
                    tls_ca_file=tls_ca_file,
                    source_password=password,
                    progress=progress,
                    verify_after=verify_after,
                    verify_lanes=lanes,
                    scan_count=scan_count,
                    batch_entries=batch_entries,
                    in_flight=in_flight,
                    overwrite=overwrite,
                )

        report = _run(work())
    console.print(_report_table(report, url))
    if dry_run:
        console.print("[yellow]dry run: nothing was written[/]")
    out = report.to_json()
    if "source" in out:  # the library redacts it too; stdout is the CLI's to guarantee
        out["source"] = url.redacted
    print(json.dumps(out))
    if report.verify_differences:
        fail(
            f"verify found {report.verify_differences} difference(s): see the run's verify.json", 1
        )


def verify_command(
    source: Source,
    match: Match = None,
    type_: Type = None,
    conversation_pattern: ConversationPattern = "conversation:{id}",
    session_pattern: SessionPattern = "session:{id}",
    owner_pattern: OwnerPattern = "user:{id}:conversations",
    tls_ca_file: TLSCA = None,
    source_password_file: SourcePasswordFile = None,
    lanes: Lanes = None,
    short_ttl: ShortTTL = "clamp",
) -> None:
    """Compare every key of the source with KV (type, value, TTL) and list differences."""
    url, password = _source(source, source_password_file)
    config = bulk_process(settings())
    options = _options(config, conversation_pattern, session_pattern, owner_pattern, short_ttl)

    async def work() -> Any:
        async with open_namespace(config, purpose="bulk") as kv:
            return await verify(
                source,
                namespace=kv,
                options=options,
                match=match,
                type_=type_,
                tls_ca_file=tls_ca_file,
                source_password=password,
                lanes=lanes,
            )

    report = _run(work())
    for difference in report.differences:
        console.print(
            f"[red]DIFF[/] {safe_name(str(difference.key))}: {safe_name(str(difference.problem))}",
            soft_wrap=True,
        )
    for note in report.notes:
        console.print(f"[yellow]NOTE[/] {safe_name(note)}", soft_wrap=True)
    console.print(
        f"checked {report.checked} key(s) of {safe_name(url.redacted)}: "
        f"{len(report.differences)} difference(s); skipped {sum(report.skipped.values())}",
        soft_wrap=True,
    )
    print(json.dumps(report.to_json()))
    if report.differences:
        raise typer.Exit(1)


def rollback_command(
    run_id: Annotated[str, typer.Argument(help="The run id printed by brainbot migrate.")],
    delete_kv: Annotated[
        bool, typer.Option(help="Delete from KV exactly what the run wrote.")
    ] = False,
    restore_to: Annotated[
        str | None, typer.Option(help="Restore the run's backup into this Redis URL.")
    ] = None,
    tls_ca_file: TLSCA = None,
    restore_password_file: Annotated[
        str | None,
        typer.Option(
            "--restore-password-file",
            help="A file (not readable by group or others) holding --restore-to's password; "
            f"or set {RESTORE_PASSWORD_ENV}.",
        ),
    ] = None,
) -> None:
    """Undo a migration run: delete its KV writes and/or restore Redis from its backup."""
    if restore_password_file is not None and restore_to is None:
        fail("--restore-password-file is the password of --restore-to: give both", 2)
    target: SourceURL | None = None
    password = _password(restore_password_file, RESTORE_PASSWORD_ENV, "--restore-password-file")
    if restore_to is not None:
        target = _url(
            restore_to,
            password,
            option="--restore-to",
            env=RESTORE_PASSWORD_ENV,
            file_option="--restore-password-file",
        )
    config = bulk_process(settings())

    async def work() -> Any:
        kv = open_namespace(config, purpose="bulk") if delete_kv else None
        try:
            return await rollback(
                run_id,
                runs=migration_runs(config),
                namespace=kv,
                delete_kv=delete_kv,
                restore_to=restore_to,
                tls_ca_file=tls_ca_file,
                restore_password=password,
            )
        finally:
            if kv is not None:
                await kv.aclose()

    report = _run(work())
    if delete_kv:
        console.print(
            f"run {safe_name(run_id)}: deleted {report.kv_deleted} KV entries, gave "
            f"{report.kv_restored} their earlier value back, {report.kv_absent} were gone"
            + (
                f", {report.kv_given_back_before} held their earlier value already"
                if report.kv_given_back_before
                else ""
            ),
            soft_wrap=True,
        )
        for reason, n in sorted(report.kv_kept.items()):
            console.print(f"  kept {n} KV entries: {safe_name(reason)}", soft_wrap=True)
    if target is not None:
        console.print(
            f"run {safe_name(run_id)}: restored {report.redis_restored} Redis keys into "
            f"{safe_name(target.redacted)}, {report.redis_unchanged} were unchanged, "
            f"kept {report.redis_kept} changed since the run, {report.redis_expired} had "
            "expired since the backup",
            soft_wrap=True,
        )
    if report.kept_names:
        shown = ", ".join(safe_name(name) for name in report.kept_names[:20])
        more = len(report.kept_names) - 20
        console.print(f"  kept: {shown}{f' and {more} more' if more > 0 else ''}", soft_wrap=True)
    if report.kv_unsuccessful:
        fail(f"{len(report.kv_unsuccessful)} KV entries could not be deleted; run it again", 1)
