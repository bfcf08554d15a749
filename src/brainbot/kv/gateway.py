"""A KV namespace through brainbot's gateway Worker (``workers/kv-gateway``), for live traffic.

Every REST API call counts against Cloudflare's 1,200 requests per 5 minutes for the whole
account; KV calls a Worker makes through its binding do not. The bot's live traffic
therefore goes to a small Worker of ours, in batches: operations issued concurrently within
a couple of milliseconds travel in one signed HTTP request (at most 1,000 KV operations,
the Workers limit per invocation). Bulk loads (the migration) keep using the REST API,
whose bulk write takes 10,000 keys per request.

Requests are signed: ``X-Brainbot-Signature = hex(HMAC-SHA256(secret, timestamp "\\n"
body))`` with ``X-Brainbot-Timestamp``, checked by the Worker in constant time within a
300 s window. Values travel base64, so binary values are byte-exact. Retries and errors are
the REST client's: 429, 5xx and transport failures are retried with jittered backoff
(honouring ``Retry-After``), and a failed operation raises the same typed error.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import httpx

from brainbot.kv.errors import (
    KVRemoteError,
    KVTransportError,
    RateLimited,
    ServerError,
    error_from_response,
)
from brainbot.kv.limits import (
    JSON,
    check_cursor,
    check_prefix,
    key_bytes,
    list_limit,
    validate_put,
)
from brainbot.kv.namespace import (
    CLOUDFLARE,
    BulkResult,
    Consistency,
    Entry,
    KeyInfo,
    ListPage,
    PutItem,
)
from brainbot.kv.rest import RetryPolicy, _parse_retry_after, _retry_hook

MAX_KV_OPS = 1000  # per Worker invocation
_COST = {"get": 2, "put": 1, "delete": 1, "list": 1}  # the Worker's own count


class _Secret(httpx.Auth):
    """Signs each request body; the secret lives here only."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("A gateway secret is required.")
        self.__secret = secret.encode()

    def __repr__(self) -> str:
        return "_Secret('***')"

    def auth_flow(self, request: httpx.Request) -> Any:
        stamp = str(int(time.time()))
        signature = hmac.new(
            self.__secret, stamp.encode() + b"\n" + request.content, hashlib.sha256
        )
        request.headers["X-Brainbot-Timestamp"] = stamp
        request.headers["X-Brainbot-Signature"] = signature.hexdigest()
        yield request


class GatewayKV:
    """The KV namespace behind the gateway Worker at ``url``."""

    consistency: Consistency = CLOUDFLARE

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        batch_window: float = 0.002,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme != "https" and parsed.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("Refusing to send signed requests over plain http to a remote host.")
        self.url = url.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        self.batch_window = batch_window
        self.requests = 0
        """HTTP requests sent (each carries up to 1,000 KV operations)."""
        self._clock = clock
        self._http = httpx.AsyncClient(auth=_Secret(secret), timeout=timeout, transport=transport)
        self._pending: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._cost = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"GatewayKV(url={self.url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._flush()
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._http.aclose()

    # -- batching ----------------------------------------------------------------------

    def _submit(self, op: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        cost = _COST[op["op"]]
        if self._cost + cost > MAX_KV_OPS:
            self._flush()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((op, future))
        self._cost += cost
        if self._timer is None:
            self._timer = loop.call_later(self.batch_window, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._cost = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]
    ) -> None:
        body = json.dumps({"ops": [op for op, _ in batch]}, separators=(",", ":")).encode()
        try:
            results = await self._post(body)
            if len(results) != len(batch):
                raise ServerError(
                    f"The gateway answered {len(results)} results for {len(batch)} ops."
                )
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _post(self, body: bytes) -> list[dict[str, Any]]:
        """One batch request, retried as a whole on 429, 5xx and transport failures."""
        response: httpx.Response | None = None
        async for attempt in self.retry.context(_retry_hook):
            with attempt:
                self.requests += 1
                try:
                    response = await self._http.post(
                        self.url + "/v1/batch",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.TimeoutException as exc:
                    raise KVTransportError(f"gateway: timed out ({type(exc).__name__})") from None
                except httpx.TransportError as exc:
                    raise KVTransportError(f"gateway: {type(exc).__name__}: {exc}") from None
                if response.status_code == 429:
                    raise RateLimited(
                        "gateway: rate limited",
                        status=429,
                        retry_after=_parse_retry_after(response.headers.get("Retry-After")),
                    )
                if response.status_code >= 500:
                    raise ServerError(
                        f"gateway: {_error_text(response)}", status=response.status_code
                    )
                if response.status_code != 200:
                    raise KVRemoteError(
                        f"gateway: {_error_text(response)}", status=response.status_code
                    )
        assert response is not None
        results = response.json().get("results")
        if not isinstance(results, list):
            raise ServerError("gateway: the answer has no results list")
        return results

    async def _call(self, op: dict[str, Any]) -> dict[str, Any]:
        """One operation, batched with its neighbours; a failed one raises its typed error,
        and is retried when that error is transient (a per-key 429, a 5xx)."""
        result: dict[str, Any] = {}
        async for attempt in self.retry.context(_retry_hook):
            with attempt:
                result = await self._submit(op)
                if not result.get("ok"):
                    raise error_from_response(
                        int(result.get("status", 500)),
                        result.get("code"),
                        str(result.get("message")),
                    )
        return result

    # -- the namespace interface -------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        key_bytes(key)
        result = await self._call({"op": "get", "key": key})
        if result.get("value") is None:
            return None
        return Entry(
            base64.b64decode(result["value"]), result.get("expiration"), result.get("metadata")
        )

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        for key in keys:
            key_bytes(key)
        unique = list(dict.fromkeys(keys))
        entries = await asyncio.gather(*(self.get(k) for k in unique))
        found = dict(zip(unique, entries, strict=True))
        return {k: found[k] for k in keys}

    def _put_op(self, item: PutItem) -> dict[str, Any]:
        _, data, _, _ = validate_put(item, self._clock())
        op: dict[str, Any] = {
            "op": "put",
            "key": item.key,
            "value": base64.b64encode(data).decode(),
        }
        if item.expiration is not None:
            op["expiration"] = int(item.expiration)
        if item.expiration_ttl is not None:
            op["expiration_ttl"] = int(item.expiration_ttl)
        if item.metadata is not None:
            op["metadata"] = item.metadata
        return op

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expiration: int | None = None,
        expiration_ttl: int | None = None,
        metadata: JSON = None,
    ) -> None:
        await self._call(self._put_op(PutItem(key, value, expiration, expiration_ttl, metadata)))

    async def delete(self, key: str) -> None:
        key_bytes(key)
        await self._call({"op": "delete", "key": key})

    async def list(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_prefix(prefix)
        op: dict[str, Any] = {"op": "list", "limit": list_limit(limit)}
        if prefix:
            op["prefix"] = prefix
        cursor = check_cursor(cursor)
        if cursor is not None:
            op["cursor"] = cursor
        result = await self._call(op)
        keys = [
            KeyInfo(k["name"], k.get("expiration"), k.get("metadata"))
            for k in result.get("keys", [])
        ]
        return ListPage(keys=keys, cursor=result.get("cursor") or None)

    async def _many(self, ops: builtins.list[dict[str, Any]], keys: Sequence[str]) -> BulkResult:
        outcomes = await asyncio.gather(*(self._call(op) for op in ops), return_exceptions=True)
        failed = []
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, RateLimited | ServerError | KVTransportError):
                failed.append(key)  # transient, still failing after the retry policy
            elif isinstance(outcome, BaseException):
                raise outcome
        return BulkResult(len(keys) - len(failed), tuple(failed))

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        ops = [self._put_op(item) for item in items]  # all validated before any is sent
        return await self._many(ops, [item.key for item in items])

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        for key in keys:
            key_bytes(key)
        return await self._many([{"op": "delete", "key": k} for k in keys], keys)


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error"))
    except ValueError:
        return f"HTTP {response.status_code}"
