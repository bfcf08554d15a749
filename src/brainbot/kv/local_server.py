"""A local server for Cloudflare's KV REST API, over the embedded KV.

``brainbot kv serve`` runs it: the same paths, JSON envelopes, status codes and error
codes as ``api.cloudflare.com/client/v4``, so the REST client, Cloudflare's own Python SDK
and wrangler are served over real HTTP without an account:

* one account (``account_id``; another account's paths answer 403 / 10000, as Cloudflare
  does for a token without access), and its namespaces: list (``page``, ``per_page``,
  ``order`` = id | title, ``direction``), create (``title``, unique: 400 / 10014), get,
  rename, delete. A namespace exists only once created (or given with ``--namespace``);
  an unknown id answers 404 / 10013 on every KV endpoint. The registry lives in
  ``namespaces.json`` in the data directory, each namespace in its own SQLite file, at
  most ``max_open`` of them open at once (least recently used closed first);
* the values, metadata, keys and bulk endpoints, for every key KV accepts (newlines and
  any other character, percent-encoded in the path);
* ``GET /user/tokens/verify``, ``GET /memberships``, ``GET /accounts`` and ``GET /user``
  (403 / 9109: an API token has no user details) as Cloudflare answers them, which is what
  ``wrangler whoami`` and wrangler's error paths ask.

For resilience tests it injects :class:`~brainbot.kv.faults.Faults` (list lag through
:class:`~brainbot.kv.overlay.ListLag`, the inverse of read-your-writes); with
``test_clock`` it also accepts ``POST /__brainbot/clock {"advance": seconds}`` so expiry
can be shown without waiting. ``GET /__brainbot/stats`` (same token) counts the requests
it has answered, by route, so tests count API requests at the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.policy
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from brainbot.kv.embedded import EmbeddedKV
from brainbot.kv.errors import (
    BulkTooLarge,
    InvalidExpiration,
    InvalidExpirationTTL,
    InvalidKey,
    InvalidListLimit,
    InvalidMetadata,
    InvalidValue,
    KVError,
    ValueTooLarge,
)
from brainbot.kv.faults import FaultInjector, Faults
from brainbot.kv.limits import (
    BULK_DELETE_MAX_KEYS,
    BULK_GET_MAX_KEYS,
    BULK_WRITE_MAX_BYTES,
    BULK_WRITE_MAX_ITEMS,
    MAX_METADATA_BYTES,
    MAX_VALUE_BYTES,
    key_bytes,
    validate_put,
)
from brainbot.kv.namespace import Entry, KeyInfo, KVNamespace, PutItem
from brainbot.kv.overlay import ListLag
from brainbot.serving import transport

log = logging.getLogger("brainbot.kv.local_server")
LOCAL_ACCOUNT = "0123456789abcdef0123456789abcdef"
"""The account of a server started without ``--account``."""
_ACCOUNT = "/client/v4/accounts/{account}"
_NAMESPACES = _ACCOUNT + "/storage/kv/namespaces"
_NS = _NAMESPACES + "/{namespace}"
_NAMESPACE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY_IN_PATH = re.compile(rb"/storage/kv/namespaces/[^/]+/(?:values|metadata)/(.*)$", re.DOTALL)
_NAMESPACE_IN_PATH = re.compile(rb"/storage/kv/namespaces/([^/]*)")
MAX_NAMESPACES = 1000  # Cloudflare's limit per account
MAX_TITLE = 512


class _AnyPath(Convertor[str]):
    """Starlette's ``path`` convertor stops at a newline (``.*``); a KV key may hold one."""

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("kvkey", _AnyPath())


class Registry:
    """The namespaces of the one account: ``namespaces.json`` in the data directory
    (written atomically, 0600), each namespace's data in ``<id>.sqlite3``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "namespaces.json"
        self.titles: dict[str, str] = {}
        if self.path.exists():
            self.titles = {str(k): str(v) for k, v in json.loads(self.path.read_text()).items()}
        else:  # a data dir of an older version: its files become namespaces, titled by id
            for file in sorted(data_dir.glob("*.sqlite3")):
                if _NAMESPACE_ID.fullmatch(file.stem):
                    self.titles[file.stem] = file.stem
            if self.titles:
                self.save()

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.titles, out, indent=1, sort_keys=True)
        os.replace(temporary, self.path)

    def _unique(self, title: str) -> None:
        if title in self.titles.values():
            raise _Refused(400, 10014, "a namespace with this account ID and title already exists")

    def rename(self, namespace_id: str, title: str) -> None:
        if namespace_id not in self.titles:  # deleted while the new title was on its way
            raise _NotFound(10013, "namespace not found")
        if title != self.titles[namespace_id]:
            self._unique(title)
            self.titles[namespace_id] = title
            self.save()

    def create(self, title: str, namespace_id: str | None = None) -> str:
        self._unique(title)
        if len(self.titles) >= MAX_NAMESPACES:
            raise _Refused(400, 10026, f"an account has at most {MAX_NAMESPACES} namespaces")
        namespace_id = namespace_id or uuid.uuid4().hex
        self.titles[namespace_id] = title
        self.save()
        return namespace_id


class TestClock:
    """Wall-clock time plus an offset that tests may advance."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def envelope(
    result: Any = None,
    *,
    errors: list[tuple[int, str]] | None = None,
    status: int = 200,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        {
            "success": not errors,
            "errors": [{"code": c, "message": m} for c, m in errors or []],
            "messages": [],
            "result": result,
            **extra,
        },
        status_code=status,
    )


def error_response(exc: KVError) -> JSONResponse:
    return envelope(errors=[(exc.cf_code, exc.message)], status=exc.http_status)


@dataclass
class LocalKVServer:
    """The ASGI application's state: namespaces, token, faults and request counts."""

    data_dir: Path
    token: str
    faults: Faults = field(default_factory=Faults)
    test_clock: bool = False
    account_id: str = LOCAL_ACCOUNT
    namespaces: tuple[str, ...] = ()
    """Namespace ids to have from the start (created, titled by their id, if new)."""
    auto_create: bool = False
    """Create a namespace on its first use (the old behaviour; tests with many ids)."""
    max_open: int = 64
    _clock: Callable[[], float] = field(init=False)
    _registry: Registry = field(init=False)
    _busy: Counter[str] = field(init=False, default_factory=Counter)
    _namespaces: OrderedDict[str, KVNamespace] = field(init=False, default_factory=OrderedDict)
    _injector: FaultInjector = field(init=False)
    requests: int = field(init=False, default=0)
    by_route: Counter[str] = field(init=False, default_factory=Counter)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("The local KV server needs a token.")
        self._clock = TestClock() if self.test_clock else time.time
        self._injector = FaultInjector(self.faults)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._registry = Registry(self.data_dir)
        for namespace_id in self.namespaces:
            if not _NAMESPACE_ID.fullmatch(namespace_id):
                raise ValueError(
                    f"Invalid namespace id {namespace_id!r}: use [A-Za-z0-9_-]{{1,64}}."
                )
            if namespace_id not in self._registry.titles:
                self._registry.create(namespace_id, namespace_id)

    def __repr__(self) -> str:
        return f"LocalKVServer(data_dir={str(self.data_dir)!r}, faults={self.faults!r})"

    def app(self) -> Starlette:
        routes = [
            Route(_NAMESPACES, self._namespace_list, methods=["GET", "POST"]),
            Route(_NS, self._namespace_one, methods=["GET", "PUT", "DELETE"]),
            Route(_NS + "/values/{key:kvkey}", self._values, methods=["GET", "PUT", "DELETE"]),
            Route(_NS + "/metadata/{key:kvkey}", self._metadata, methods=["GET"]),
            Route(_NS + "/keys", self._keys, methods=["GET"]),
            Route(_NS + "/bulk", self._bulk, methods=["PUT", "DELETE"]),
            Route(_NS + "/bulk/delete", self._bulk_delete, methods=["POST"]),
            Route(_NS + "/bulk/get", self._bulk_get, methods=["POST"]),
        ]
        routes += [
            Route("/client/v4/user/tokens/verify", self._token_verify, methods=["GET"]),
            Route("/client/v4/user", self._user, methods=["GET"]),
            Route("/client/v4/memberships", self._memberships, methods=["GET"]),
            Route("/client/v4/accounts", self._accounts, methods=["GET"]),
        ]
        routes.append(Route("/__brainbot/stats", self._stats, methods=["GET"]))
        if self.test_clock:
            routes.append(Route("/__brainbot/clock", self._advance_clock, methods=["POST"]))

        async def no_route(request: Request, exc: Exception) -> Response:
            return envelope(errors=[(7000, "No route for that URI")], status=400)

        async def wrong_method(request: Request, exc: Exception) -> Response:
            return envelope(
                errors=[(7001, f"Method {request.method} not available for that URI.")],
                status=405,
            )

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.aclose()

        return Starlette(
            routes=routes,
            exception_handlers={404: no_route, 405: wrong_method},
            lifespan=lifespan,
        )

    async def aclose(self) -> None:
        for kv in self._namespaces.values():
            await kv.aclose()
        self._namespaces.clear()

    # -- plumbing ----------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), self.token.encode("utf-8")
        )

    async def _guard(self, request: Request) -> Response | None:
        """Authentication first, then the injected faults, as Cloudflare's edge would."""
        self.requests += 1
        route = _route_name(request)
        self.by_route[route] += 1
        if not self._authorised(request):
            return envelope(errors=[(10000, "Authentication error")], status=401)
        account = request.path_params.get("account")
        if account is not None and account != self.account_id:  # a token of another account
            return envelope(errors=[(10000, "Authentication error")], status=403)
        lockout = self._injector.over_budget()
        if lockout is not None:
            response = envelope(
                errors=[(971, "Please wait and consider throttling your request speed")],
                status=429,
            )
            response.headers["Retry-After"] = str(max(1, round(lockout)))
            return response
        delay = self._injector.delay()
        if route.split(" ", 1)[1].startswith("bulk"):
            delay += self.faults.bulk_latency
        if delay:
            await asyncio.sleep(delay)
        status = self._injector.error_status()
        if status == 429:
            response = envelope(errors=[(10048, "Too many requests (injected)")], status=429)
            response.headers["Retry-After"] = str(self.faults.retry_after)
            return response
        if status is not None:
            return envelope(errors=[(10001, "Internal error (injected)")], status=status)
        return None

    async def _namespace(self, request: Request) -> KVNamespace:
        """The namespace of the path, opened (at most ``max_open`` at once: the least
        recently used is closed first, so many ids cost no threads or descriptors)."""
        namespace_id = _namespace_id(request)
        if namespace_id not in self._registry.titles:
            if not self.auto_create:
                raise _NotFound(10013, "namespace not found")
            self._registry.create(namespace_id, namespace_id)
        kv = self._namespaces.get(namespace_id)
        if kv is not None:
            self._namespaces.move_to_end(namespace_id)
            return kv
        idle = [n for n in self._namespaces if not self._busy[n]]  # oldest first
        for old in idle[: max(0, len(self._namespaces) - self.max_open + 1)]:
            await self._namespaces.pop(old).aclose()  # never one a request is using
        kv = EmbeddedKV(self.data_dir / f"{namespace_id}.sqlite3", clock=self._clock, durable=False)
        if self.faults.list_lag:
            kv = ListLag(kv, self.faults.list_lag)
        self._namespaces[namespace_id] = kv
        return kv

    @staticmethod
    def _key(request: Request) -> str:
        """The key from the raw path: one percent-encoded segment, decoded exactly once."""
        match = _KEY_IN_PATH.search(request.scope.get("raw_path") or b"")
        if match is None or not match.group(1):
            raise InvalidKey("Illegal key name '': keys cannot be empty, '.' or '..'.")
        try:
            return unquote_to_bytes(match.group(1)).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKey("Key names must be valid UTF-8.") from None

    async def _serve(
        self, request: Request, handler: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        refusal = await self._guard(request)
        if refusal is not None:
            return refusal
        namespace_id = request.path_params.get("namespace", "")
        self._busy[namespace_id] += 1
        try:
            return await handler(request)
        except KVError as exc:
            if namespace_id and namespace_id not in self._registry.titles:  # deleted meanwhile
                return envelope(errors=[(10013, "namespace not found")], status=404)
            return error_response(exc)
        except _NotFound as exc:
            return envelope(errors=[(exc.code, exc.message)], status=404)
        except _Refused as exc:
            return envelope(errors=[(exc.code, exc.message)], status=exc.status)
        except _TooSoon:
            response = envelope(
                errors=[(10048, "KV PUT failed: 429 Too Many Requests (1 write/s per key)")],
                status=429,
            )
            response.headers["Retry-After"] = "1"
            return response
        except Exception:  # never a bare 500 page: always Cloudflare's envelope
            log.exception("local KV server: unexpected error")
            return envelope(errors=[(10001, "Internal error")], status=500)
        finally:
            self._busy[namespace_id] -= 1
            if not self._busy[namespace_id]:
                del self._busy[namespace_id]

    # -- routes ------------------------------------------------------------------------

    async def _values(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            kv, key = await self._namespace(request), self._key(request)
            if request.method == "GET":
                entry = await kv.get(key)
                if entry is None:
                    raise _NotFound(10009, "get: 'key not found'")
                headers = {} if entry.expiration is None else {"expiration": str(entry.expiration)}
                return Response(entry.value, media_type="application/octet-stream", headers=headers)
            if request.method == "DELETE":
                if self._injector.too_soon(f"{request.path_params['namespace']}/{key}"):
                    raise _TooSoon
                await kv.delete(key)
                return envelope()
            value, metadata = await _read_put_body(request)
            expiration, ttl = _expiry_params(request.query_params)
            if self._injector.too_soon(f"{request.path_params['namespace']}/{key}"):
                raise _TooSoon
            await kv.put(key, value, expiration=expiration, expiration_ttl=ttl, metadata=metadata)
            return envelope()

        return await self._serve(request, handle)

    async def _metadata(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            entry = await (await self._namespace(request)).get(self._key(request))
            if entry is None:
                raise _NotFound(10009, "metadata: 'key not found'")
            return envelope(entry.metadata)

        return await self._serve(request, handle)

    async def _keys(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            kv = await self._namespace(request)
            params = request.query_params
            raw_limit = params.get("limit", "1000")
            try:
                limit = int(raw_limit)
            except ValueError:
                raise InvalidListLimit(
                    f"Invalid key_count_limit of {raw_limit}. Please specify an integer."
                ) from None
            prefix, cursor = params.get("prefix", ""), params.get("cursor") or None
            page = await kv.list(prefix=prefix, cursor=cursor, limit=limit)
            return envelope(
                [_key_json(k) for k in page.keys],
                result_info={"count": len(page.keys), "cursor": page.cursor or ""},
            )

        return await self._serve(request, handle)

    async def _bulk(self, request: Request) -> Response:
        if request.method == "DELETE":
            return await self._bulk_delete(request)

        async def handle(request: Request) -> Response:
            kv = await self._namespace(request)
            body = await _read_json(request, BULK_WRITE_MAX_BYTES)
            if not isinstance(body, list):
                raise InvalidValue("The bulk write body must be a JSON array.")
            if len(body) > BULK_WRITE_MAX_ITEMS:
                raise BulkTooLarge(
                    f"Bulk write of {len(body)} pairs exceeds the limit of {BULK_WRITE_MAX_ITEMS}."
                )
            items = [_bulk_put_item(i, raw) for i, raw in enumerate(body)]
            for item in items:  # the whole request is refused before any fault is rolled
                validate_put(item, self._clock())
            kv_items = list({item.key: item for item in items}.values())
            failed = self._injector.failed_bulk_keys([item.key for item in kv_items])
            to_write = [item for item in kv_items if item.key not in failed]
            await kv.put_many(to_write)
            written = sum(1 for item in items if item.key not in failed)
            return envelope({"successful_key_count": written, "unsuccessful_keys": sorted(failed)})

        return await self._serve(request, handle)

    async def _bulk_delete(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            kv = await self._namespace(request)
            body = await _read_json(request, BULK_WRITE_MAX_BYTES)
            if not isinstance(body, list) or not all(isinstance(k, str) for k in body):
                raise InvalidKey("The bulk delete body must be a JSON array of key names.")
            if len(body) > BULK_DELETE_MAX_KEYS:
                raise BulkTooLarge(
                    f"Bulk delete of {len(body)} keys exceeds the limit of {BULK_DELETE_MAX_KEYS}."
                )
            for key in body:
                key_bytes(key)
            failed = self._injector.failed_bulk_keys(body)
            to_delete = [k for k in body if k not in failed]
            await kv.delete_many(to_delete)
            return envelope(
                {"successful_key_count": len(to_delete), "unsuccessful_keys": sorted(failed)}
            )

        return await self._serve(request, handle)

    async def _bulk_get(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            kv = await self._namespace(request)
            body = await _read_json(request, BULK_WRITE_MAX_BYTES)
            keys = body.get("keys") if isinstance(body, dict) else None
            kind = body.get("type", "text") if isinstance(body, dict) else None
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise InvalidKey("bulk/get needs {'keys': [names...]}.")
            if len(keys) > BULK_GET_MAX_KEYS:
                raise BulkTooLarge(
                    f"Bulk get of {len(keys)} keys exceeds the limit of {BULK_GET_MAX_KEYS}."
                )
            if kind not in ("text", "json"):
                raise InvalidValue(f"Invalid type {kind!r}: use 'text' or 'json'.")
            with_metadata = bool(body.get("withMetadata", False))
            found = await kv.get_many(keys)
            total = sum(len(e.value) for e in found.values() if e is not None)
            if total > MAX_VALUE_BYTES:
                raise BulkTooLarge(
                    f"Bulk get values total {total} bytes, over the limit of {MAX_VALUE_BYTES}."
                )
            values = {k: _bulk_get_value(e, kind, with_metadata) for k, e in found.items()}
            return envelope({"values": values})

        return await self._serve(request, handle)

    # -- namespaces --------------------------------------------------------------------

    def _namespace_json(self, namespace_id: str) -> dict[str, Any]:
        return {
            "id": namespace_id,
            "title": self._registry.titles[namespace_id],
            "supports_url_encoding": True,
        }

    async def _namespace_list(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            if request.method == "POST":
                title = await _title(request)
                return envelope(self._namespace_json(self._registry.create(title)))
            params = request.query_params
            page = _positive(params.get("page", "1"), "page")
            per_page = min(_positive(params.get("per_page", "20"), "per_page"), 1000)
            order = params.get("order", "id")
            direction = params.get("direction", "asc")
            if order not in ("id", "title") or direction not in ("asc", "desc"):
                raise _Refused(400, 10001, "order must be id or title, direction asc or desc")
            rows = [self._namespace_json(n) for n in self._registry.titles]
            rows.sort(key=lambda row: row[order], reverse=direction == "desc")
            total = len(rows)
            shown = rows[(page - 1) * per_page : page * per_page]
            info = {
                "page": page,
                "per_page": per_page,
                "count": len(shown),
                "total_count": total,
                "total_pages": max(1, -(-total // per_page)),
            }
            return envelope(shown, result_info=info)

        return await self._serve(request, handle)

    async def _namespace_one(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            namespace_id = _namespace_id(request)
            if namespace_id not in self._registry.titles:
                raise _NotFound(10013, "namespace not found")
            if request.method == "GET":
                return envelope(self._namespace_json(namespace_id))
            if request.method == "PUT":
                self._registry.rename(namespace_id, await _title(request))
                return envelope(self._namespace_json(namespace_id))
            kv = self._namespaces.pop(namespace_id, None)
            if kv is not None:
                await kv.aclose()
            del self._registry.titles[namespace_id]
            self._registry.save()
            await asyncio.to_thread(_remove_files, self.data_dir, namespace_id)
            return envelope({})

        return await self._serve(request, handle)

    # -- identity: what wrangler asks ---------------------------------------------------

    async def _token_verify(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            token_id = hashlib.sha256(self.token.encode()).hexdigest()[:32]
            return JSONResponse(
                {
                    "success": True,
                    "errors": [],
                    "messages": [
                        {
                            "code": 10000,
                            "message": "This API Token is valid and active",
                            "type": None,
                        }
                    ],
                    "result": {"id": token_id, "status": "active"},
                }
            )

        return await self._serve(request, handle)

    async def _user(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            raise _Refused(403, 9109, "Unauthorized to access requested resource")

        return await self._serve(request, handle)

    def _account_json(self) -> dict[str, Any]:
        return {"id": self.account_id, "name": "brainbot kv serve", "type": "standard"}

    async def _accounts(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            info = {"page": 1, "per_page": 20, "count": 1, "total_count": 1, "total_pages": 1}
            return envelope([self._account_json()], result_info=info)

        return await self._serve(request, handle)

    async def _memberships(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            membership = {
                "id": hashlib.sha256(f"m{self.account_id}".encode()).hexdigest()[:32],
                "account": self._account_json(),
                "status": "accepted",
                "roles": ["Administrator"],
                "permissions": {"workers_kv_storage": {"read": True, "write": True}},
            }
            info = {"page": 1, "per_page": 20, "count": 1, "total_count": 1, "total_pages": 1}
            return envelope([membership], result_info=info)

        return await self._serve(request, handle)

    async def _stats(self, request: Request) -> Response:
        if not self._authorised(request):
            return envelope(errors=[(10000, "Authentication error")], status=401)
        return envelope(
            {
                "requests": self.requests,
                "by_route": dict(self.by_route),
                "budget_rejections": self._injector.budget_rejections,
            }
        )

    async def _advance_clock(self, request: Request) -> Response:
        if not self._authorised(request):
            return envelope(errors=[(10000, "Authentication error")], status=401)
        try:
            body = await _read_json(request, 64 * 1024)
        except KVError as exc:
            return error_response(exc)
        advance = body.get("advance", 0) if isinstance(body, dict) else None
        if (
            isinstance(advance, bool)
            or not isinstance(advance, int | float)
            or not math.isfinite(advance)  # NaN would stop every read
            or abs(advance) > 2**31
        ):
            return envelope(errors=[(10001, "advance: a finite number of seconds")], status=400)
        assert isinstance(self._clock, TestClock)
        self._clock.offset += advance
        return envelope({"now": self._clock()})


class _TooSoon(Exception):
    """A key written again within a second (only with the key_write_limit fault)."""


class _NotFound(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message


class _Refused(Exception):
    """An answer of Cloudflare's with its status and code (duplicate title, bad page...)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def _namespace_id(request: Request) -> str:
    """The namespace id, which must be the raw path's segment as sent: routes match the
    decoded path, so ``<id>%2Fvalues%2Fk/values/z`` (or ``<id>%2Fbulk``) would otherwise
    reach <id> on a route, and a key, the client never named."""
    namespace_id: str = request.path_params["namespace"]
    match = _NAMESPACE_IN_PATH.search(request.scope.get("raw_path") or b"")
    if (
        not _NAMESPACE_ID.fullmatch(namespace_id)
        or match is None
        or match.group(1) != namespace_id.encode()
    ):
        raise _NotFound(10013, "namespace not found")
    return namespace_id


def _remove_files(data_dir: Path, namespace_id: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"{namespace_id}.sqlite3{suffix}").unlink(missing_ok=True)


def _positive(raw: str, name: str) -> int:
    """``isdigit`` alone lets through what ``int`` refuses ('²', over 4,300 digits)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise _Refused(400, 10001, f"{name} must be a positive integer")
    return int(raw)


async def _title(request: Request) -> str:
    body = await _read_json(request, 64 * 1024)
    title = body.get("title") if isinstance(body, dict) else None
    try:  # a lone surrogate (JSON's "\ud800") has no UTF-8 form to store or answer
        size = len(title.encode()) if isinstance(title, str) else 0
    except UnicodeEncodeError:
        size = MAX_TITLE + 1
    if not isinstance(title, str) or not title.strip() or size > MAX_TITLE:
        raise _Refused(400, 10019, "a namespace needs a title of 1 to 512 bytes")
    return title


def _route_name(request: Request) -> str:
    """``METHOD kind`` of an API request (``PUT values``, ``POST bulk/get``, ``GET keys``)."""
    path = request.url.path
    marker = "/storage/kv/namespaces/"
    if marker not in path:  # the route's template: a path may hold any account id
        return f"{request.method} {getattr(request.scope.get('route'), 'path', path)}"
    rest = path.split(marker, 1)[1].split("/", 1)
    tail = rest[1] if len(rest) > 1 else ""
    kind = tail.split("/", 1)[0] if tail.startswith(("values/", "metadata/")) else tail
    return f"{request.method} {kind}"


def _key_json(info: KeyInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"name": info.name}
    if info.expiration is not None:
        out["expiration"] = info.expiration
    if info.metadata is not None:
        out["metadata"] = info.metadata
    return out


def _bulk_get_value(entry: Entry | None, kind: str, with_metadata: bool) -> Any:
    if entry is None:
        return None
    text = entry.value.decode("utf-8", "replace")
    if kind == "json":
        try:
            value: Any = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidValue("bulk/get with type 'json' met a value that is not JSON.") from None
    else:
        value = text
    if not with_metadata:
        return value
    out = {"value": value, "metadata": entry.metadata}
    if entry.expiration is not None:
        out["expiration"] = entry.expiration
    return out


def _int_param(raw: str | None, name: str, error: type[KVError]) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise error(f"Invalid {name} of {raw}. Please specify integer.") from None


def _expiry_params(params: Any) -> tuple[int | None, int | None]:
    ttl = _int_param(params.get("expiration_ttl"), "expiration_ttl", InvalidExpirationTTL)
    expiration = _int_param(params.get("expiration"), "expiration", InvalidExpiration)
    return (None, ttl) if ttl is not None else (expiration, None)  # Cloudflare: the TTL wins


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused by its Content-Length before a byte is read, else counted while
    it streams (a body without a length is cut off as soon as it passes ``limit``)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BulkTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BulkTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON; too large stays 413 (``BulkTooLarge`` is a ValueError too), and
    nesting past the recursion limit is invalid JSON, not a 500."""
    body = await _read_body(request, limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidValue("The request body is not valid JSON.") from None


async def _read_put_body(request: Request) -> tuple[bytes, Any]:
    """Raw bytes, or multipart parts ``value`` (bytes) and ``metadata`` (JSON text).

    Parsed with the standard library's MIME parser, which hands back each part's exact
    bytes (Starlette's form parser decodes non-file parts as text, which is lossy)."""
    content_type = request.headers.get("content-type", "")
    body = await _read_body(request, MAX_VALUE_BYTES + MAX_METADATA_BYTES + 64 * 1024)
    if not content_type.startswith("multipart/form-data"):
        if len(body) > MAX_VALUE_BYTES:
            raise ValueTooLarge(f"Value length of {len(body)} exceeds limit of {MAX_VALUE_BYTES}.")
        return body, None
    # off the event loop: the parser goes line by line, and 20 MB of newlines took 8 s,
    # during which every other request waited
    message = await asyncio.to_thread(
        BytesParser(policy=email.policy.HTTP).parsebytes,
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
    )
    parts = {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }
    value = parts.get("value")
    if not isinstance(value, bytes):
        raise InvalidValue("A multipart write needs a 'value' part.")
    raw_meta = parts.get("metadata")
    if not isinstance(raw_meta, bytes):
        return value, None
    try:
        return value, json.loads(raw_meta)
    except (ValueError, RecursionError):
        raise InvalidMetadata("Metadata must be valid JSON.") from None


def _bulk_put_item(index: int, raw: Any) -> PutItem:
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        raise InvalidKey(f"Bulk item {index} needs a string 'key'.")
    value = raw.get("value")
    if not isinstance(value, str):
        raise InvalidValue(f"Bulk item {index}: 'value' must be a string.")
    data: bytes | str = value
    if raw.get("base64"):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidValue(f"Bulk item {index}: 'value' is not valid base64.") from None
    ttl, expiration = raw.get("expiration_ttl"), raw.get("expiration")
    return PutItem(
        key=raw["key"],
        value=data,
        expiration=None if ttl is not None else expiration,
        expiration_ttl=ttl,
        metadata=raw.get("metadata"),
    )


async def serve(
    server: LocalKVServer,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    announce: Callable[[str], None] | None = None,
    header_timeout: float = 10.0,
    max_connections: int = 1000,
) -> None:
    """Run until cancelled or signalled; announce ``READY <base-url> account=<id>`` once
    accepting. The transport is ``brainbot serve``'s, with its limits (``serving.transport``):
    a client sending headers slowly is cut off after ``header_timeout``, and so is an idle
    keep-alive connection (the deadline for its next request's headers): 10 s, longer than
    httpx and Node keep an idle connection (5 s), so they close first."""

    def ready(line: str) -> None:
        line = f"{line} account={server.account_id}"
        if announce is not None:
            announce(line)
        else:
            print(line, flush=True)

    await transport.serve(
        server.app(),
        host=host,
        port=port,
        header_timeout=header_timeout,
        max_connections=max_connections,
        keep_alive=30,  # (the header deadline closes an idle connection first)
        announce=ready,
        path="/client/v4",
        backlog=2048,
        lifespan="on",
    )
