"""A KV namespace through brainbot's gateway Worker (``workers/kv-gateway``), for live traffic.

Every REST API call counts against Cloudflare's 1,200 requests per 5 minutes for the whole
account; KV calls a Worker makes through its binding do not. The bot's live traffic
therefore goes to a small Worker of ours, in batches: operations issued concurrently within
a couple of milliseconds travel in one signed HTTP request (at most 1,000 KV operations,
the Workers limit per invocation, and at most ``max_batch_bytes``; a large value travels
alone, and a batch the Worker answers 413 is split in two and sent again). Bulk loads (the
migration) keep using the REST API, whose bulk write takes 10,000 keys per request.

**Atomic read-modify-write** (``coordinated``, the default): the Worker hands ``xread`` /
``xcommit`` to the Durable Object owning the key, which holds the authoritative value,
commits only if the keys read still have the versions read (else answers the current ones,
and the change runs again), and writes KV behind itself at most once a second per key.
Cost: a read-modify-write is 2 operations (read, commit) in whatever batches they share,
plus one more per conflict; exact reads and blind writes are 1. Each commit carries a
transaction id, so a commit retried after a lost answer is applied once; the object keeps
ids 5 minutes, so a commit first sent more than 4 minutes ago (retries go on for up to 15)
is refused (409) rather than risk applying it twice: the caller gets an error, the outcome
of its first send unknown.

**Requests are signed** over everything that makes them mean something: method, host,
path, the deployment's namespace name, a timestamp (the Worker accepts 30 s of skew), a
random nonce (the Worker refuses one it has seen) and the body's SHA-256 (checked after the
headers, so a forged request is refused before its body is read). Values travel base64, so
binary values are byte-exact. Retries and errors are the REST client's: 429, 5xx and
transport failures are retried with jittered backoff (honouring ``Retry-After``), and a
failed operation raises the same typed error; a refused clock raises ``ClockSkew``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import httpx

from brainbot.errors import ClockSkew, WriteConflict
from brainbot.kv.errors import (
    AnswerTooLarge,
    AuthenticationError,
    KVRemoteError,
    KVTransportError,
    RateLimited,
    ServerError,
    error_from_response,
)
from brainbot.kv.limits import (
    JSON,
    MAX_VALUE_BYTES,
    check_cursor,
    check_prefix,
    key_bytes,
    list_limit,
    validate_put,
)
from brainbot.kv.namespace import (
    CLOUDFLARE,
    BulkResult,
    Change,
    Consistency,
    Entry,
    KeyInfo,
    ListPage,
    PutItem,
    R,
    Writes,
)
from brainbot.kv.rest import (
    RetryPolicy,
    _parse_json,
    _parse_retry_after,
    _retry_hook,
    read_capped,
)

MAX_KV_OPS = 1000  # per Worker invocation
MAX_BATCH_BYTES = 4 * 1024 * 1024  # far below the isolate's 128 MB
ALONE_BYTES = 1024 * 1024  # an op this big travels in a request of its own
MAX_CONFLICTS = 1000  # commits lost to other writers in a row before WriteConflict
MAX_FULL_ANSWERS = 1000  # times in a row an op found its batch's answer full
LIST_ENTRY_ANSWER = 4096
"""At most what one listed name (512 bytes, JSON-escaped) and its metadata (1 KiB) take in
an answer."""
MAX_LIST_ANSWER = 32 * 1024 * 1024
"""The list pages one batch may ask for, by their worst case (``limit`` x
``LIST_ENTRY_ANSWER``: 8 full pages): the Worker budgets the values it answers
(``AnswerBudget``), not names and metadata, so the client keeps list pages within this."""
MAX_ANSWER_BYTES = 2 * (-(-MAX_VALUE_BYTES // 3) * 4) + MAX_LIST_ANSWER + (8 << 20)
"""The Worker answers about one value's worth (base64) beside the list pages above and
small entries (1,000 gets' metadata); more than that is no legitimate answer: reading
stops there."""
_COST = {"get": 2, "put": 1, "delete": 1, "list": 1, "xstats": 0}  # the Worker's own count
SIGNATURE_VERSION = "brainbot-v2"


def signed_headers(
    secret: str | bytes,
    method: str,
    url: str | httpx.URL,
    body: bytes,
    namespace: str = "default",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authenticate one request to the gateway (see the module doc)."""
    key = secret.encode() if isinstance(secret, str) else secret
    parsed = httpx.URL(str(url))
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(16) if nonce is None else nonce
    body_hash = hashlib.sha256(body).hexdigest()
    text = "\n".join(
        [
            SIGNATURE_VERSION,
            method.upper(),
            parsed.host.lower(),
            parsed.path,
            namespace,
            stamp,
            nonce,
            body_hash,
        ]
    )
    return {
        "X-Brainbot-Timestamp": stamp,
        "X-Brainbot-Nonce": nonce,
        "X-Brainbot-Namespace": namespace,
        "X-Brainbot-Content-SHA256": body_hash,
        "X-Brainbot-Signature": hmac.new(key, text.encode(), hashlib.sha256).hexdigest(),
    }


class _Secret(httpx.Auth):
    """Signs each request (a fresh nonce every time, retries included); the secret lives
    here only."""

    def __init__(self, secret: str, namespace: str) -> None:
        if not secret:
            raise ValueError("A gateway secret is required.")
        self.__secret = secret.encode()
        self.namespace = namespace

    def __repr__(self) -> str:
        return "_Secret('***')"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers.update(
            signed_headers(
                self.__secret, request.method, request.url, request.content, self.namespace
            )
        )
        yield request


Pending = tuple[dict[str, Any], "asyncio.Future[dict[str, Any]]"]


def _op_bytes(op: dict[str, Any]) -> int:
    """About what an op adds to a batch's body (its values dominate)."""
    size = 64 + len(op.get("key", ""))
    if op["op"] == "put":
        size += len(op["value"]) + (len(json.dumps(op["metadata"])) if "metadata" in op else 0)
    elif op["op"] == "xcommit":
        size += sum(64 + len(k) + (len(w["value"]) if w else 0) for k, w in op["write"])
        size += sum(32 + len(k) for k, _ in op["read"])
    elif op["op"] == "xread":
        size += sum(8 + len(k) for k in op["keys"])
    return size


def _op_cost(op: dict[str, Any]) -> int:
    if op["op"] == "xread":
        return 2 * len(op["keys"])
    if op["op"] == "xcommit":
        return 3 * (len(op["read"]) + len(op["write"]))
    return _COST[op["op"]]


def _entry(raw: dict[str, Any] | None) -> Entry | None:
    if raw is None:
        return None
    return Entry(base64.b64decode(raw["value"]), raw.get("expiration"), raw.get("metadata"))


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
        namespace: str = "default",
        coordinated: bool = True,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme != "https" and parsed.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("Refusing to send signed requests over plain http to a remote host.")
        self.url = url.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        self.batch_window = batch_window
        self.requests = 0
        """HTTP requests sent (each carries up to 1,000 KV operations)."""
        self.coordinated = coordinated
        """Read-modify-writes go to the Worker's Durable Object (atomic across processes)."""
        self.max_batch_bytes = max_batch_bytes
        self._clock = clock
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            auth=_Secret(secret, namespace), timeout=timeout, transport=transport
        )
        self._pending: list[Pending] = []
        self._cost = 0
        self._bytes = 0
        self._listed = 0  # the batch's list pages, at their worst (MAX_LIST_ANSWER)
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
        cost, size = _op_cost(op), _op_bytes(op)
        listed = op["limit"] * LIST_ENTRY_ANSWER if op["op"] == "list" else 0
        if (
            self._cost + cost > MAX_KV_OPS
            or self._bytes + size > self.max_batch_bytes
            or self._listed + listed > MAX_LIST_ANSWER
        ):
            self._flush()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((op, future))
        self._cost += cost
        self._bytes += size
        self._listed += listed
        if size >= min(ALONE_BYTES, self.max_batch_bytes // 2):
            self._flush()  # a large value goes alone: a 413 never takes small ops with it
        elif self._timer is None:
            self._timer = loop.call_later(self.batch_window, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._cost = self._bytes = self._listed = 0
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Pending]) -> None:
        body = json.dumps({"ops": [op for op, _ in batch]}, separators=(",", ":")).encode()
        try:
            results = await self._post(body)
            if len(results) != len(batch):
                raise ServerError(
                    f"The gateway answered {len(results)} results for {len(batch)} ops."
                )
        except KVRemoteError as exc:
            if exc.status == 413 and len(batch) > 1:  # too big as a whole: halves, again
                half = len(batch) // 2
                await asyncio.gather(self._send(batch[:half]), self._send(batch[half:]))
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
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
                request = self._http.build_request(
                    "POST",
                    self.url + "/v1/batch",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    response = await read_capped(
                        self._http, request, MAX_ANSWER_BYTES, grace=5 * self._timeout
                    )
                except AnswerTooLarge as exc:
                    raise AnswerTooLarge(f"gateway: {exc.message}", status=exc.status) from None
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
                if response.status_code == 401:
                    text = _error_text(response)
                    if text.startswith("clock skew"):
                        raise ClockSkew(
                            f"gateway: {text}; check this machine's clock (NTP)", status=401
                        )
                    raise AuthenticationError(f"gateway: {text}", status=401)
                if response.status_code != 200:
                    raise KVRemoteError(
                        f"gateway: {_error_text(response)}", status=response.status_code
                    )
        assert response is not None
        try:
            answer = _parse_json(response.content)
        except ValueError:
            raise ServerError(
                "gateway: the answer is not JSON", status=response.status_code
            ) from None
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise ServerError("gateway: the answer has no results list")
        return results

    async def _call(self, op: dict[str, Any]) -> dict[str, Any]:
        """One operation, batched with its neighbours; a failed one raises its typed error,
        and is retried when that error is transient (a per-key 429, a 5xx). A commit's
        conflict is an answer, not an error."""
        result: dict[str, Any] = {}
        async for attempt in self.retry.context(_retry_hook):
            with attempt:
                result = await self._answered(op)
                if not result.get("ok") and not result.get("conflict"):
                    raise error_from_response(
                        int(result.get("status", 500)),
                        result.get("code"),
                        str(result.get("message")),
                    )
        return result

    async def _answered(self, op: dict[str, Any]) -> dict[str, Any]:
        """The op's result. The Worker bounds the values one answer carries (one 25 MiB
        value's worth, an isolate has 128 MB) and marks the ops past it ``retry``: they go
        again at once, in a later batch, which answers at least its first op."""
        for _ in range(MAX_FULL_ANSWERS):
            result = await self._submit(op)
            if not result.get("retry"):
                return result
        raise ServerError(
            f"gateway: no room for this op's values in {MAX_FULL_ANSWERS} answers in a row",
            status=503,
        )

    # -- atomic read-modify-write: the Coordinated capability ---------------------------

    def _write_op(self, item: PutItem | None) -> dict[str, Any] | None:
        if item is None:
            return None
        op = self._put_op(item)
        return {k: v for k, v in op.items() if k not in ("op", "key")}

    async def _commit(self, read: builtins.list[tuple[str, int]], writes: Writes) -> dict[str, Any]:
        for key in writes:
            key_bytes(key)
        op = {
            "op": "xcommit",
            "txid": secrets.token_hex(16),  # the same on a retry: applied once
            # when first sent: a retry later than the object keeps txids is refused
            "sent": int(time.time() * 1000),
            "read": [[k, v] for k, v in read],
            "write": [[k, self._write_op(item)] for k, item in writes.items()],
        }
        return await self._call(op)

    async def read_exact(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        for key in keys:
            key_bytes(key)
        unique = builtins.list(dict.fromkeys(keys))
        if not unique:
            return {}
        result = await self._call({"op": "xread", "keys": unique})
        found = dict(zip(unique, map(_entry, result["entries"]), strict=True))
        return {k: found[k] for k in keys}

    async def write_exact(self, writes: Writes) -> None:
        if writes:
            await self._commit([], writes)

    async def transact(self, keys: Sequence[str], change: Change[R]) -> R:
        unique = builtins.list(dict.fromkeys(keys))
        for key in unique:
            key_bytes(key)
        state = await self._call({"op": "xread", "keys": unique})
        for _ in range(MAX_CONFLICTS):
            entries = dict(zip(unique, map(_entry, state["entries"]), strict=True))
            writes, result = change(entries)
            if not writes:
                return result
            answer = await self._commit(
                builtins.list(zip(unique, state["versions"], strict=True)), writes
            )
            if answer.get("ok"):
                return result
            # lost to another writer: the answer holds the current entries, so the retry
            # goes at once (a pause would only make them stale again: the writers that
            # do not pause would win every round)
            state = answer
        raise WriteConflict(
            f"A read-modify-write of {len(unique)} key(s) lost to other writers "
            f"{MAX_CONFLICTS} times in a row; nothing was written."
        )

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
        answer = _parse_json(response.content)
    except ValueError:
        return f"HTTP {response.status_code}"
    return str(answer.get("error")) if isinstance(answer, dict) else f"HTTP {response.status_code}"
