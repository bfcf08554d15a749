"""Pick the namespace implementation from the settings: Cloudflare if configured, else embedded."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

from brainbot.kv.budget import RequestBudget
from brainbot.kv.embedded import EmbeddedKV
from brainbot.kv.gateway import GatewayKV
from brainbot.kv.namespace import KVNamespace
from brainbot.kv.rest import CloudflareKV

if TYPE_CHECKING:
    from brainbot.config import Settings


_budgets: dict[tuple[str, str, int, float], RequestBudget] = {}


def shared_budget(base_url: str, token: str, limit: int, window: float) -> RequestBudget:
    """One budget per process for each API token (Cloudflare counts per user, not per
    client object): namespaces opened twice in one process share their requests."""
    fingerprint = hashlib.sha256(token.encode()).hexdigest()
    key = (base_url, fingerprint, limit, window)
    if key not in _budgets:
        _budgets[key] = RequestBudget(limit, window)
    return _budgets[key]


def open_namespace(
    settings: Settings | None = None, *, purpose: Literal["live", "bulk"] = "live"
) -> KVNamespace:
    """The namespace for ``purpose``: live traffic goes through the gateway Worker when one
    is configured (``BRAINBOT_KV_GATEWAY_URL``), since REST calls spend the account's API
    budget; bulk loads use the REST API (10,000 keys per request), else the embedded KV."""
    if settings is None:
        from brainbot.config import Settings  # config imports this package: import late

        settings = Settings()
    if purpose == "live" and settings.kv_gateway_url:
        if settings.kv_gateway_secret is None:
            from brainbot.config import ConfigError

            raise ConfigError("BRAINBOT_KV_GATEWAY_URL needs BRAINBOT_KV_GATEWAY_SECRET.")
        return GatewayKV(settings.kv_gateway_url, settings.kv_gateway_secret.get_secret_value())
    if not settings.uses_cloudflare:
        return EmbeddedKV(settings.embedded_kv_path)
    assert settings.cloudflare_account_id
    assert settings.cloudflare_kv_namespace_id
    assert settings.cloudflare_kv_api_token is not None
    return CloudflareKV(
        account_id=settings.cloudflare_account_id,
        namespace_id=settings.cloudflare_kv_namespace_id,
        api_token=settings.cloudflare_kv_api_token.get_secret_value(),
        base_url=settings.cloudflare_api_base_url,
        budget=RequestBudget(settings.cloudflare_api_budget, settings.cloudflare_api_budget_window),
    )
