"""The ``brainbot`` console command."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from brainbot.cli.auth import auth_app
from brainbot.cli.kv import kv_app
from brainbot.cli.migrate import migrate, rollback_command, verify_command

app = typer.Typer(
    name="brainbot",
    help="brainbot: a chat bot whose data lives in Cloudflare Workers KV.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(kv_app, name="kv")
app.add_typer(auth_app, name="auth")
app.command("migrate")(migrate)
app.command("verify")(verify_command)
app.command("rollback")(rollback_command)


@app.callback()
def _every_command() -> None:
    """brainbot: a chat bot whose data lives in Cloudflare Workers KV."""
    import stamina.instrumentation

    from brainbot.kv.rest import log_retry

    stamina.instrumentation.set_on_retry_hooks([log_retry])  # retries said in one line


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).", min=0, max=65535)] = 8080,
    responder: Annotated[
        str | None,
        typer.Option(envvar="BRAINBOT_RESPONDER", help="'module:attribute' of a responder."),
    ] = None,
) -> None:
    """Run the chat service on the configured store; prints 'READY <url>'."""
    from brainbot.cli.common import handled, run, settings
    from brainbot.composition import allowed_hosts, chat_service, forwarded_allow_ips
    from brainbot.service import serve

    config = settings()
    with handled():
        hosts, proxies = allowed_hosts(config), forwarded_allow_ips(config)
        service = chat_service(config, responder)
    app = service.app(allowed_hosts=hosts)
    with contextlib.suppress(KeyboardInterrupt):
        run(
            serve(
                app,
                host=host,
                port=port,
                header_timeout=config.header_timeout,
                max_connections=config.max_connections,
                forwarded_allow_ips=proxies,
            )
        )


@app.command()
def demo() -> None:
    """Run the main job on the configured namespace (embedded by default)."""
    from brainbot.demo import main as run_demo

    run_demo()


def main() -> None:
    app()
