"""``brainbot migrate``, ``brainbot verify`` and ``brainbot rollback``.

The source URL may hold a password: it is shown redacted everywhere. Exit codes: 0 done
(and verified), 1 differences found or the run stopped (resume with --resume), 2 bad input
or configuration, 3 not found.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

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

from brainbot.cli.common import fail, handled, run, settings
from brainbot.composition import bulk_process, migration_runs, open_namespace
from brainbot.config import Settings
from brainbot.migration import Options, migrate_redis_to_kv, rollback, verify
from brainbot.migration.source import redacted

console = Console(stderr=True, highlight=False)

Source = Annotated[
    str, typer.Option("--source", help="redis:// or rediss:// URL (db in the path).")
]
Match = Annotated[str | None, typer.Option(help="Only keys matching this SCAN pattern.")]
Type = Annotated[str | None, typer.Option("--type", help="Only keys of this Redis type.")]
TLSCA = Annotated[
    str | None, typer.Option(help="CA file to trust for rediss:// (test certificates).")
]
ConversationPattern = Annotated[str, typer.Option(help="Legacy conversation lists.")]
SessionPattern = Annotated[str, typer.Option(help="Legacy session strings.")]
OwnerPattern = Annotated[str, typer.Option(help="Legacy sets of a user's conversation ids.")]


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


def _report_table(report: Any) -> Table:
    table = Table(title=f"migration {report.run_id} of {report.source}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("keys seen", str(report.keys_seen))
    for kind, n in sorted(report.migrated.items()):
        table.add_row(f"migrated {kind}", str(n))
    table.add_row("KV entries written", str(report.kv_entries))
    for reason, n in sorted(report.skipped.items()):
        table.add_row(f"skipped: {reason}", str(n))
    for note, n in sorted(report.notes.items()):
        table.add_row(f"note: {note}", str(n))
    table.add_row("API requests", str(report.api_requests))
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
    short_ttl: Annotated[str, typer.Option(help="Keys with < 60 s left: clamp or skip.")] = "clamp",
    conversation_pattern: ConversationPattern = "conversation:{id}",
    session_pattern: SessionPattern = "session:{id}",
    owner_pattern: OwnerPattern = "user:{id}:conversations",
    tls_ca_file: TLSCA = None,
    verify_after: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    scan_count: Annotated[int, typer.Option(help="SCAN COUNT per batch.", min=10)] = 1000,
    batch_entries: Annotated[
        int, typer.Option(help="KV entries per write and checkpoint.", min=1, max=10_000)
    ] = 10_000,
) -> None:
    """Migrate Redis/Upstash into the configured KV namespace (embedded by default)."""
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
                    progress=progress,
                    verify_after=verify_after,
                    scan_count=scan_count,
                    batch_entries=batch_entries,
                )

        report = run(work())
    console.print(_report_table(report))
    if dry_run:
        console.print("[yellow]dry run: nothing was written[/]")
    print(json.dumps(report.to_json()))
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
) -> None:
    """Compare every key of the source with KV (type, value, TTL) and list differences."""
    config = bulk_process(settings())
    options = _options(config, conversation_pattern, session_pattern, owner_pattern, "clamp")

    async def work() -> Any:
        async with open_namespace(config, purpose="bulk") as kv:
            return await verify(
                source,
                namespace=kv,
                options=options,
                match=match,
                type_=type_,
                tls_ca_file=tls_ca_file,
            )

    report = run(work())
    for difference in report.differences:
        console.print(f"[red]DIFF[/] {difference.key}: {difference.problem}")
    console.print(
        f"checked {report.checked} key(s) of {redacted(source)}: "
        f"{len(report.differences)} difference(s); skipped {sum(report.skipped.values())}"
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
) -> None:
    """Undo a migration run: delete its KV writes and/or restore Redis from its backup."""
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
            )
        finally:
            if kv is not None:
                await kv.aclose()

    report = run(work())
    console.print(
        f"run {run_id}: deleted {report.kv_deleted} KV entries, restored {report.redis_restored} "
        f"Redis keys ({report.redis_expired} had expired since the backup)"
    )
    if report.kv_unsuccessful:
        fail(f"{len(report.kv_unsuccessful)} KV entries could not be deleted; run it again", 1)
