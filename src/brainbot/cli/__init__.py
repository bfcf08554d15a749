"""The ``brainbot`` console command."""

from __future__ import annotations

import typer

from brainbot.cli.kv import kv_app

app = typer.Typer(
    name="brainbot",
    help="brainbot: a chat bot whose data lives in Cloudflare Workers KV.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(kv_app, name="kv")


@app.command()
def demo() -> None:
    """Run the main job on the configured namespace (embedded by default)."""
    from brainbot.demo import main as run_demo

    run_demo()


def main() -> None:
    app()
