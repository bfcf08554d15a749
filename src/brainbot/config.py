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
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        allow_inf_nan=False,  # ``gt=0`` lets "inf" through, and no timeout or budget is infinite
    )

    data_dir: Path = Field(default=Path(".brainbot"), alias="BRAINBOT_DATA_DIR")
    """Where the embedded KV (and later backups and checkpoints) live."""
    kv_namespace: str = Field(
        default="brainbot", pattern=r"^[A-Za-z0-9_-]{1,64}$", alias="BRAINBOT_KV_NAMESPACE"
    )
    """Name of the embedded namespace file under ``data_dir/kv/``: a plain file name (as
    ``kv serve``'s namespace ids), so no ``..`` or ``/`` leads outside that directory."""

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
    kv_gateway_namespace: str = Field(
        default="default",
        pattern=r"^[\x21-\x7e]{1,64}$",
        alias="BRAINBOT_KV_GATEWAY_NAMESPACE",
    )
    """The gateway deployment's GATEWAY_NAMESPACE: part of every signature, so a request
    signed for one deployment is refused by another with the same secret."""
    kv_single_writer: bool = Field(default=False, alias="BRAINBOT_KV_SINGLE_WRITER")
    """Through the REST API alone, read-modify-write is atomic only within one process:
    live traffic refuses to start that way unless this says one process writes."""

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

    cloudflare_api_live_share: float = Field(
        default=0.25, ge=0, lt=1, alias="CLOUDFLARE_API_LIVE_SHARE"
    )
    """Share of the API budget kept for live traffic: bulk work (migration) never uses it."""
    live_budget_wait: float = Field(default=2.0, gt=0, alias="BRAINBOT_LIVE_BUDGET_WAIT")
    """Seconds live traffic waits for an API budget slot before it fails fast (503)."""
    kv_busy_timeout: float = Field(default=5.0, gt=0, alias="BRAINBOT_KV_BUSY_TIMEOUT")
    """Seconds a write to the embedded KV waits for another process's lock (then 503)."""

    # -- brainbot serve: identity --------------------------------------------------------
    auth_jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BRAINBOT_AUTH_JWT_SECRET", "auth_jwt_secret"),
    )
    """HS256 secret shared with the front end that signs identity tokens (>= 32 bytes)."""
    auth_public_key_file: Path | None = Field(default=None, alias="BRAINBOT_AUTH_PUBLIC_KEY_FILE")
    """PEM public key of the front end (RS256, ES256 or EdDSA identity tokens)."""
    auth_jwks_file: Path | None = Field(default=None, alias="BRAINBOT_AUTH_JWKS_FILE")
    """A JWKS file of the front end's public keys (tokens name theirs with ``kid``)."""
    auth_audience: str = Field(default="brainbot", alias="BRAINBOT_AUTH_AUDIENCE")
    auth_issuer: str | None = Field(default=None, alias="BRAINBOT_AUTH_ISSUER")
    operators: str = Field(default="", alias="BRAINBOT_OPERATORS")
    """Comma-separated identities (``sub``) allowed to reach every conversation."""

    # -- brainbot serve: sessions and limits ---------------------------------------------
    session_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BRAINBOT_SESSION_SECRET", "session_secret"),
    )
    """Signs session ids; every instance of the service needs the same one (unset: a local
    secret in the data directory, enough for one machine)."""
    session_lifetime: int = Field(default=3600, ge=60, alias="BRAINBOT_SESSION_LIFETIME")
    """Seconds a session lives without use (sliding)."""
    session_max_lifetime: int = Field(default=86400, ge=60, alias="BRAINBOT_SESSION_MAX_LIFETIME")
    """Seconds a session lives at most, however busy (then log in again)."""
    max_message_bytes: int = Field(default=32 * 1024, ge=1, alias="BRAINBOT_MAX_MESSAGE_BYTES")
    max_conversation_messages: int = Field(
        default=10_000, ge=1, alias="BRAINBOT_MAX_CONVERSATION_MESSAGES"
    )
    max_conversation_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, alias="BRAINBOT_MAX_CONVERSATION_BYTES"
    )
    max_response_bytes: int = Field(
        default=1024 * 1024, ge=1024, alias="BRAINBOT_MAX_RESPONSE_BYTES"
    )
    rate_sessions: str = Field(default="10/minute", alias="BRAINBOT_RATE_SESSIONS")
    """Logins per identity (``limits`` notation: "10/minute", "100 per hour")."""
    rate_failed_auth_per_address: str = Field(
        default="30/minute", alias="BRAINBOT_RATE_FAILED_AUTH_PER_ADDRESS"
    )
    """Failed logins and unknown sessions per client address, before any KV request."""
    rate_writes: str = Field(default="120/minute", alias="BRAINBOT_RATE_WRITES")
    """Writes (turns, messages, new and deleted conversations) per identity."""
    rate_writes_per_address: str = Field(
        default="600/minute", alias="BRAINBOT_RATE_WRITES_PER_ADDRESS"
    )
    rate_reads: str = Field(default="600/minute", alias="BRAINBOT_RATE_READS")
    """History pages and conversation lists per identity."""
    forwarded_allow_ips: str = Field(default="", alias="BRAINBOT_FORWARDED_ALLOW_IPS")
    """Proxies (comma-separated addresses) whose X-Forwarded-For names the client."""

    # -- brainbot serve: transport -------------------------------------------------------
    allowed_hosts: str = Field(default="127.0.0.1,localhost,::1", alias="BRAINBOT_ALLOWED_HOSTS")
    """Host names the service answers to (comma-separated; ``*.example.com`` allowed)."""
    header_timeout: float = Field(default=10.0, gt=0, alias="BRAINBOT_HEADER_TIMEOUT")
    """Seconds a client has to send a request's line and headers."""
    body_timeout: float = Field(default=30.0, gt=0, alias="BRAINBOT_BODY_TIMEOUT")
    """Seconds a client has to send a request's body."""
    max_connections: int = Field(default=1000, ge=1, alias="BRAINBOT_MAX_CONNECTIONS")
    """Connections and requests at once; beyond, 503."""
    health_interval: float = Field(default=10.0, gt=0, alias="BRAINBOT_HEALTH_INTERVAL")
    """/health answers from real traffic this fresh, else probes with one write."""

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
