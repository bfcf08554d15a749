"""The composition root: the one place that turns ``Settings`` into brainbot's objects.

Each entry point (a CLI command, ``brainbot serve``, the demo) builds ``Settings`` once
(:func:`load_settings`) and asks this module for what it needs; everything below takes
explicit arguments and reads no environment. The decisions made here:

* **which namespace** (:func:`open_namespace`): live traffic goes through the gateway Worker
  when one is configured, bulk work through Cloudflare's REST API, and with no Cloudflare
  settings everything uses the embedded KV;
* **one API budget per token per process** (:func:`request_budget`): Cloudflare counts
  requests per user/token, so every REST namespace opened in this process with one token
  draws on the same 1,200-per-5-minutes allowance (the migration and the verify it runs
  included);
* **the store's KV rules follow the namespace actually opened**: write spacing and the
  read-your-writes window come from the namespace's own ``consistency`` (a gateway-only
  deployment gets Cloudflare's rules), unless set explicitly;
* **which store** (:func:`open_store`): ``BRAINBOT_STORAGE_BACKEND`` = kv | dual | redis.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import ValidationError

from brainbot.config import Settings
from brainbot.errors import ConfigError
from brainbot.kv.budget import RequestBudget
from brainbot.kv.embedded import EmbeddedKV
from brainbot.kv.gateway import GatewayKV
from brainbot.kv.namespace import KVNamespace, coordinator_of
from brainbot.kv.rest import DEFAULT_BASE_URL, CloudflareKV
from brainbot.storage import DualStore, KVStore, RedisBackend, Store

if TYPE_CHECKING:  # the service and its JWT stack load when a command needs them:
    # ``brainbot migrate`` and ``kv`` start 0.3 s sooner without them
    from brainbot.service import ChatService, IdentityVerifier, ServiceLimits

Purpose = Literal["live", "bulk"]


def load_settings(**values: Any) -> Settings:
    """``Settings`` from the environment (and ``values``); invalid ones raise ConfigError
    naming the settings, never their values."""
    _check_env_file(Path(".env"))
    try:
        return Settings(**values)
    except ValidationError as exc:
        names = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
        raise ConfigError("Invalid settings: " + ", ".join(names) + ".") from None


def _check_env_file(path: Path) -> None:
    """A ``.env`` line python-dotenv cannot parse is a ConfigError naming its number: it
    only logs a warning and drops the line, so a setting there (an unterminated quote
    around a token) would be silently missing. The line itself is not shown: it may hold a
    secret. What is not a readable file is left to pydantic-settings, as before."""
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("The .env file is not UTF-8 text.") from None
    except OSError:
        return
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f".env line {binding.original.line} is not NAME=value (python-dotenv cannot "
                "read it; an unclosed quote?)."
            )


def cloudflare_credentials(settings: Settings) -> tuple[str, str, str] | None:
    """(account id, namespace id, API token) when Cloudflare is configured, None when none
    of the three is set; some but not all is a ConfigError naming the missing ones."""
    given = settings.cloudflare_settings
    missing = [name for name, value in given.items() if not value]
    if len(missing) == len(given):
        return None
    if missing:
        raise ConfigError(
            "Cloudflare KV is partly configured; also set: " + ", ".join(missing) + "."
        )
    token = settings.cloudflare_kv_api_token
    return (
        str(settings.cloudflare_account_id),
        str(settings.cloudflare_kv_namespace_id),
        token.get_secret_value() if token is not None else "",
    )


_budgets: dict[tuple[str, str, int, float], RequestBudget] = {}


def request_budget(settings: Settings, token: str) -> RequestBudget:
    """The process's one budget for ``token`` at the configured API (created on first use
    with ``CLOUDFLARE_API_BUDGET`` per ``CLOUDFLARE_API_BUDGET_WINDOW``)."""
    base_url = settings.cloudflare_api_base_url or DEFAULT_BASE_URL
    key = (
        base_url.rstrip("/"),
        hashlib.sha256(token.encode()).hexdigest(),
        settings.cloudflare_api_budget,
        settings.cloudflare_api_budget_window,
    )
    budget = _budgets.get(key)
    if budget is None:
        limit = settings.cloudflare_api_budget
        budget = RequestBudget(
            limit,
            settings.cloudflare_api_budget_window,
            reserved_for_live=min(int(limit * settings.cloudflare_api_live_share), limit - 1),
        )
        _budgets[key] = budget
    return budget


def bulk_process(settings: Settings) -> Settings:
    """Settings for a process that does only bulk work (migrate, verify, rollback): it
    takes the budget less the live share (``CLOUDFLARE_API_LIVE_SHARE``), so the bot's
    processes on the same token keep theirs while it runs."""
    share = settings.cloudflare_api_live_share
    limit = max(1, int(settings.cloudflare_api_budget * (1 - share)))
    return settings.model_copy(update={"cloudflare_api_budget": limit})


def open_namespace(settings: Settings, *, purpose: Purpose = "live") -> KVNamespace:
    """The namespace for ``purpose``: live traffic goes through the gateway Worker when one
    is configured (``BRAINBOT_KV_GATEWAY_URL``), since REST calls spend the account's API
    budget; bulk loads use the REST API (10,000 keys per request), else the embedded KV."""
    if purpose == "live" and settings.kv_gateway_url:
        if not settings.kv_gateway_secret or not settings.kv_gateway_secret.get_secret_value():
            raise ConfigError("BRAINBOT_KV_GATEWAY_URL needs BRAINBOT_KV_GATEWAY_SECRET.")
        with _client_settings("BRAINBOT_KV_GATEWAY_URL", "BRAINBOT_KV_GATEWAY_SECRET"):
            return GatewayKV(
                settings.kv_gateway_url,
                settings.kv_gateway_secret.get_secret_value(),
                namespace=settings.kv_gateway_namespace,
            )
    credentials = cloudflare_credentials(settings)
    if credentials is None:
        private_dir(settings.data_dir)
        private_dir(settings.embedded_kv_path.parent, narrow=True)
        return EmbeddedKV(settings.embedded_kv_path, busy_timeout=settings.kv_busy_timeout)
    account_id, namespace_id, token = credentials
    live = purpose == "live"
    with _client_settings("CLOUDFLARE_API_BASE_URL", "CLOUDFLARE_KV_API_TOKEN"):
        return CloudflareKV(
            account_id=account_id,
            namespace_id=namespace_id,
            api_token=token,
            base_url=settings.cloudflare_api_base_url or DEFAULT_BASE_URL,
            budget=request_budget(settings, token),
            live=live,
            budget_wait=settings.live_budget_wait if live else None,
        )
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _client_settings(url_setting: str, secret_setting: str) -> Iterator[None]:
    """A KV client's refusal of its settings (a URL that does not parse or would send the
    credential in clear, a token that is no header value) as a ConfigError: the clients'
    own messages name no value; httpx's URL errors may quote the URL, so they are not
    repeated."""
    try:
        yield
    except httpx.InvalidURL:
        raise ConfigError(f"{url_setting} is not a valid URL.") from None
    except ValueError as exc:
        raise ConfigError(f"{url_setting} or {secret_setting}: {exc}") from None


def open_kv_store(
    settings: Settings,
    *,
    decode_responses: bool = False,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
) -> KVStore:
    """``KVStore`` on the live namespace; its KV rules follow that namespace's consistency
    unless ``BRAINBOT_KV_KEY_WRITE_INTERVAL`` / ``BRAINBOT_KV_READ_OWN_WRITES_WINDOW`` say.

    Read-modify-write must be atomic across the bot's processes: the embedded KV and the
    gateway (its Durable Object) are; the REST API alone is not, so that setup is refused
    unless ``BRAINBOT_KV_SINGLE_WRITER`` declares a single writing process."""
    namespace = open_namespace(settings)
    if coordinator_of(namespace) is None and not settings.kv_single_writer:
        raise ConfigError(
            "Cloudflare KV through the REST API alone cannot make read-modify-write (incr, "
            "lpush, hset...) atomic across processes: set BRAINBOT_KV_GATEWAY_URL and "
            "BRAINBOT_KV_GATEWAY_SECRET (the gateway Worker's Durable Object coordinates "
            "them), or BRAINBOT_KV_SINGLE_WRITER=1 if exactly one process writes."
        )
    return KVStore(
        namespace,
        prefix=settings.kv_prefix,
        decode_responses=decode_responses,
        encoding=encoding,
        encoding_errors=encoding_errors,
        short_ttl=settings.kv_short_ttl,
        write_rate=settings.kv_write_rate,
        write_interval=settings.kv_key_write_interval,
        recent_window=settings.kv_read_own_writes_window,
    )


def open_redis(
    settings: Settings,
    *,
    decode_responses: bool = False,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
) -> RedisBackend:
    """redis-py's client for ``BRAINBOT_REDIS_URL``, its connection errors translated."""
    if settings.redis_url is None:
        raise ConfigError(
            f"BRAINBOT_STORAGE_BACKEND={settings.storage_backend} needs BRAINBOT_REDIS_URL."
        )
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigError(
            "The Redis backend needs the optional extra: pip install 'brainbot[redis]'."
        ) from None
    try:
        client: Store = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            decode_responses=decode_responses,
            encoding=encoding,
            encoding_errors=encoding_errors,
        )  # redis-py's own client satisfies Store; the wrapper only translates its errors
    except ValueError:  # its messages may quote a part of the URL: not repeated
        raise ConfigError(
            "BRAINBOT_REDIS_URL is not a valid redis://, rediss:// or unix:// URL."
        ) from None
    return RedisBackend(client)


def open_store(
    settings: Settings | None = None,
    *,
    decode_responses: bool = False,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
) -> Store:
    """The store every caller uses, chosen by ``BRAINBOT_STORAGE_BACKEND`` (``settings``
    defaults to the environment: the composition root is the one place that reads it)."""
    settings = settings if settings is not None else load_settings()
    backend = settings.storage_backend
    text: dict[str, Any] = {
        "decode_responses": decode_responses,
        "encoding": encoding,
        "encoding_errors": encoding_errors,
    }  # redis-py's names and meaning
    if backend == "redis":
        return open_redis(settings, **text)
    kv = open_kv_store(settings, **text)
    if backend == "dual":
        return DualStore(kv, open_redis(settings, **text))
    return kv


def migration_runs(settings: Settings) -> Path:
    """Where migration runs keep their checkpoints, manifests, backups and reports."""
    return settings.data_dir / "migrations"


def kv_serve_dir(settings: Settings) -> Path:
    """The default data directory of ``brainbot kv serve``."""
    return settings.data_dir / "kv-serve"


def private_dir(path: Path, *, narrow: bool = False) -> Path:
    """``path`` as a directory only its owner can enter: created 0700; an existing one is
    narrowed only when it is brainbot's own (``narrow``), never one an operator chose."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if narrow and path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def auth_secret(settings: Settings) -> str | None:
    """The HS256 secret identity tokens are signed with: configured, or (with no public key
    or JWKS configured either) the local one in ``<data dir>/auth-secret``."""
    if settings.auth_jwt_secret is not None:
        from brainbot.service.auth import MIN_SECRET_BYTES

        secret = settings.auth_jwt_secret.get_secret_value()
        if len(secret.encode()) < MIN_SECRET_BYTES:  # serve refuses it: so does auth token
            raise ConfigError(
                f"BRAINBOT_AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes."
            )
        return secret
    if settings.auth_public_key_file is not None or settings.auth_jwks_file is not None:
        return None
    from brainbot.service.auth import local_secret

    return local_secret(private_dir(settings.data_dir) / "auth-secret")


def session_key(settings: Settings) -> bytes:
    """The key session ids are signed with (``BRAINBOT_SESSION_SECRET``, shared by every
    instance; else a local one in ``<data dir>/session-secret``)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    from brainbot.service.auth import local_secret

    return local_secret(private_dir(settings.data_dir) / "session-secret").encode()


def identity_verifier(settings: Settings) -> IdentityVerifier:
    """How ``brainbot serve`` checks who a user is (``BRAINBOT_AUTH_*``)."""
    from brainbot.service.auth import IdentityVerifier, jwks_text

    try:
        public_key = (
            settings.auth_public_key_file.read_text()
            if settings.auth_public_key_file is not None
            else None
        )
        jwks = jwks_text(settings.auth_jwks_file) if settings.auth_jwks_file is not None else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"The identity key file cannot be read: {exc}") from None
    return IdentityVerifier(
        secret=auth_secret(settings),
        public_key=public_key,
        jwks=jwks,
        audience=settings.auth_audience,
        issuer=settings.auth_issuer,
        operators=frozenset(o.strip() for o in settings.operators.split(",") if o.strip()),
    )


def service_limits(settings: Settings) -> ServiceLimits:
    from brainbot.service import ServiceLimits

    return ServiceLimits(
        max_message_bytes=settings.max_message_bytes,
        max_conversation_messages=settings.max_conversation_messages,
        max_conversation_bytes=settings.max_conversation_bytes,
        max_response_bytes=settings.max_response_bytes,
        body_timeout=settings.body_timeout,
        health_interval=settings.health_interval,
        session_lifetime=settings.session_lifetime,
        session_max_lifetime=max(settings.session_max_lifetime, settings.session_lifetime),
    )


def allowed_hosts(settings: Settings) -> list[str]:
    """The host names ``brainbot serve`` answers to; none is a mistake, not "answer no one"."""
    hosts = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    if not hosts:
        raise ConfigError("BRAINBOT_ALLOWED_HOSTS names no host (e.g. 'bot.example.com').")
    return hosts


def forwarded_allow_ips(settings: Settings) -> list[str]:
    """The proxies trusted to name the client (addresses, networks as uvicorn reads them,
    or ``*``): uvicorn takes anything else as a literal no peer matches, so a typo would
    trust no proxy, and every client would count as the proxy's address."""
    proxies = [a.strip() for a in settings.forwarded_allow_ips.split(",") if a.strip()]
    for proxy in proxies:
        if proxy == "*":
            continue
        try:
            ipaddress.ip_network(proxy) if "/" in proxy else ipaddress.ip_address(proxy)
        except ValueError:
            raise ConfigError(
                "BRAINBOT_FORWARDED_ALLOW_IPS takes addresses, networks or '*', comma-separated."
            ) from None
    return proxies


def chat_service(settings: Settings, responder: str | None = None) -> ChatService:
    """``brainbot serve``'s service on the configured store, replies from ``responder``
    (``"module:attribute"``; the deterministic echo responder when None)."""
    from brainbot.responder import load_responder
    from brainbot.service import ChatService, Throttle

    try:
        responder_object = load_responder(responder)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--responder (BRAINBOT_RESPONDER) cannot be loaded: {exc}") from None
    verifier = identity_verifier(settings)
    throttle = Throttle(
        sessions=settings.rate_sessions,
        failed_per_address=settings.rate_failed_auth_per_address,
        writes=settings.rate_writes,
        writes_per_address=settings.rate_writes_per_address,
        reads=settings.rate_reads,
    )
    return ChatService(
        open_store(settings),
        identity=verifier,
        responder=responder_object,
        throttle=throttle,
        limits=service_limits(settings),
        session_key=session_key(settings),
    )
