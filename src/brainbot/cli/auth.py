"""``brainbot auth``: identity tokens for local use, the demo and the tests.

A real deployment gets its tokens from the front end users log in to; this mints HS256
tokens with the configured secret (``BRAINBOT_AUTH_JWT_SECRET``) or the local one in
``<data dir>/auth-secret``. The token is printed on stdout, alone, for scripts.
"""

from __future__ import annotations

from typing import Annotated

import typer

from brainbot.cli.common import fail, handled, settings
from brainbot.composition import auth_secret

auth_app = typer.Typer(help="Identity tokens for brainbot serve (local use, demo, tests).")


@auth_app.command("token")
def token_command(
    user: Annotated[str, typer.Option("--user", help="The identity (the token's sub).")],
    ttl: Annotated[
        int,
        typer.Option(help="Seconds the token is valid (a day at most).", min=60, max=86_400),
    ] = 3600,
) -> None:
    """Print an identity token for USER, signed with this deployment's HS256 secret."""
    from brainbot.service.auth import mint

    config = settings()
    with handled():
        secret = auth_secret(config)
        if secret is None:
            fail("identity uses a public key or JWKS here: tokens come from your front end", 2)
        print(mint(secret, user, audience=config.auth_audience, ttl=ttl, issuer=config.auth_issuer))
