"""brainbot's settings, read from the environment and an optional ``.env`` file.

The bottom of the layers: it imports nothing of brainbot and decides nothing. The
composition root (``brainbot.composition``) turns settings into objects, and each entry
point (a CLI command, ``brainbot serve``, the demo) builds ``Settings`` once.

Secrets are ``SecretStr``: printing the settings shows ``**********``, never the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(default=Path(".brainbot"), alias="BRAINBOT_DATA_DIR")
    """Where the embedded KV (and later backups and checkpoints) live."""
    kv_namespace: str = Field(default="brainbot", alias="BRAINBOT_KV_NAMESPACE")
    """Name of the embedded namespace file under ``data_dir/kv/``."""

    cloudflare_account_id: str | None = Field(default=None, alias="CLOUDFLARE_ACCOUNT_ID")
    cloudflare_kv_namespace_id: str | None = Field(default=None, alias="CLOUDFLARE_KV_NAMESPACE_ID")
    cloudflare_kv_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("CLOUDFLARE_KV_API_TOKEN", "cloudflare_kv_api_token"),
    )
    cloudflare_api_base_url: str | None = Field(default=None, alias="CLOUDFLARE_API_BASE_URL")
    """Where the REST client sends requests (unset: Cloudflare's API)."""
    cloudflare_api_budget: int = Field(default=1200, ge=1, alias="CLOUDFLARE_API_BUDGET")
    """Requests this process may send per budget window (Cloudflare: 1,200 per 5 minutes)."""
    cloudflare_api_budget_window: float = Field(
        default=300.0, gt=0, alias="CLOUDFLARE_API_BUDGET_WINDOW"
    )

    kv_gateway_url: str | None = Field(default=None, alias="BRAINBOT_KV_GATEWAY_URL")
    """The gateway Worker (workers/kv-gateway) for live traffic; the REST API stays for bulk."""
    kv_gateway_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BRAINBOT_KV_GATEWAY_SECRET", "kv_gateway_secret"),
    )

    storage_backend: Literal["kv", "redis", "dual"] = Field(
        default="kv", alias="BRAINBOT_STORAGE_BACKEND"
    )
    """The rollback switch: ``kv`` (default), ``dual`` (KV primary, Redis shadow), ``redis``."""
    redis_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BRAINBOT_REDIS_URL", "redis_url"),
    )
    """Only for ``redis``/``dual`` and the migration: may hold a password, so it is secret."""
    kv_prefix: str = Field(default="", alias="BRAINBOT_KV_PREFIX")
    """Prefix of every key ``KVStore`` writes; ``flushdb`` only touches keys under it."""
    kv_short_ttl: Literal["clamp", "reject"] = Field(default="clamp", alias="BRAINBOT_KV_SHORT_TTL")
    kv_write_rate: Literal["wait", "error"] = Field(default="wait", alias="BRAINBOT_KV_WRITE_RATE")
    kv_key_write_interval: float | None = Field(
        default=None, ge=0, alias="BRAINBOT_KV_KEY_WRITE_INTERVAL"
    )
    """Seconds between writes to one key; unset: what the namespace opened asks for (1 s on
    Cloudflare, through REST or the gateway; 0 on the embedded KV)."""
    kv_read_own_writes_window: float | None = Field(
        default=None, ge=0, alias="BRAINBOT_KV_READ_OWN_WRITES_WINDOW"
    )
    """How long this process answers its own writes from memory; unset: 60 s on an eventually
    consistent namespace (Cloudflare, which takes up to 60 s to show a write everywhere), 0
    on the strongly consistent embedded KV."""

    @property
    def cloudflare_settings(self) -> dict[str, object]:
        """The three Cloudflare credentials by environment name (all set: use Cloudflare)."""
        return {
            "CLOUDFLARE_ACCOUNT_ID": self.cloudflare_account_id,
            "CLOUDFLARE_KV_NAMESPACE_ID": self.cloudflare_kv_namespace_id,
            "CLOUDFLARE_KV_API_TOKEN": self.cloudflare_kv_api_token,
        }

    @property
    def embedded_kv_path(self) -> Path:
        return self.data_dir / "kv" / f"{self.kv_namespace}.sqlite3"
