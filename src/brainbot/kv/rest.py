"""A client for Cloudflare's KV REST API (async, httpx).

Why our own client rather than the official ``cloudflare`` SDK: the SDK is ~100 MB, retries
429 only twice and ignores ``Retry-After`` above 60 s (so it runs straight into the 5-minute
lockout), stops list pagination at an empty page that still has a cursor, and rejects str
values. What we need is eight endpoints, done carefully:

* keys are percent-encoded as one path segment (``/``, ``%``, ``?``, ``#``, space, non-ASCII);
* every request waits for a slot of the :class:`RequestBudget` before it is sent;
* 429, 5xx and transport failures are retried with jittered exponential backoff (stamina),
  honouring ``Retry-After``; a global-budget 429 pauses the whole client;
* bulk writes are split by count and by bytes, binary values travel as base64, and exactly
  the ``unsuccessful_keys`` of a bulk answer are sent again;
* ``get`` costs one request (``bulk/get`` returns value, expiry and metadata together, read
  consistently); only a value that is not UTF-8 text costs two more, to stay byte-exact;
* the API token lives only inside the auth hook and never reaches a repr, log or error
  (masked even where a proxy or a hostile server echoes it back);
* an answer is distrusted: its body is read only up to what a legitimate one can be (a
  25 MiB value, or its JSON: ``AnswerTooLarge`` past it; an endless body reached 3.8 GB
  in 15 s), and no slower than 16 KiB/s after a grace of 5 x ``timeout``; its shape, keys,
  expirations and cursors are checked within the same retry attempt (a malformed answer
  is a ``ServerError``, retried like a 5xx; a cursor that comes back is no progress);
  ``Retry-After`` is capped at 15 minutes (1e9 paused the budget for ever).
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import stamina
import stamina.instrumentation

from brainbot.errors import BudgetExhausted
from brainbot.kv.budget import RequestBudget
from brainbot.kv.errors import (
    AnswerTooLarge,
    AuthenticationError,
    BulkTooLarge,
    KVError,
    KVRemoteError,
    KVTransportError,
    KVValidationError,
    NamespaceNotFound,
    RateLimited,
    ServerError,
    error_from_response,
)
from brainbot.kv.limits import (
    BULK_DELETE_MAX_KEYS,
    BULK_GET_MAX_KEYS,
    BULK_WRITE_MAX_BYTES,
    BULK_WRITE_MAX_ITEMS,
    JSON,
    MAX_SAFE_INTEGER,
    MAX_VALUE_BYTES,
    absolute_expiration,
    check_cursor,
    check_prefix,
    key_bytes,
    list_limit,
    metadata_json,
    validate_put,
    value_bytes,
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

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
_NOT_FOUND = 10009
_GLOBAL_RATE_LIMIT = 971
_REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before giving up on one request (and on a bulk write's failed keys).

    The total ``timeout`` must outlast Cloudflare's 5-minute lockout so a long
    ``Retry-After`` is waited out rather than turned into an error.
    """

    attempts: int = 10
    timeout: float = 900.0
    wait_initial: float = 0.2
    wait_max: float = 30.0
    wait_jitter: float = 1.0

    def context(
        self, on: type[Exception] | Callable[[Exception], bool | float]
    ) -> AsyncIterator[stamina.Attempt]:
        """A stamina retry context with this policy (jittered exponential backoff)."""
        return stamina.retry_context(
            on=on,
            attempts=self.attempts,
            timeout=self.timeout,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )


class _BearerToken(httpx.Auth):
    """Adds the Authorization header; the token is kept here and nowhere else."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("An API token is required.")
        if not all("!" <= char <= "~" for char in token):  # else httpx's error quotes it
            raise ValueError(
                "The API token must be printable ASCII without spaces or line breaks, "
                "as Cloudflare's are (a quote or a newline pasted with it?)."
            )
        self.__token = token

    def __repr__(self) -> str:
        return "_BearerToken('***')"

    def redact(self, text: str) -> str:
        """The text with the token masked (a proxy or a hostile server may echo it)."""
        return text.replace(self.__token, "***")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.__token}"
        yield request


MAX_RETRY_AFTER = 900.0
MAX_JSON_ANSWER = 6 * MAX_VALUE_BYTES + (1 << 20)
"""A bulk/get of 25 MiB of control bytes is ~150 MB of JSON; nothing legitimate is larger."""
MAX_VALUE_ANSWER = MAX_VALUE_BYTES + (64 << 10)
MIN_ANSWER_RATE = 16 << 10  # bytes a second an answer must keep up, after its grace


async def read_capped(
    http: httpx.AsyncClient, request: httpx.Request, cap: int, *, grace: float
) -> httpx.Response:
    """Send ``request``, then read its (decoded) body only up to ``cap`` bytes
    (``AnswerTooLarge`` past it) and no slower than ``MIN_ANSWER_RATE`` after ``grace``
    seconds (``httpx.ReadTimeout``): httpx's timeout is per read, and a body dripping a
    byte at a time never trips it, while ``Response.read()`` takes an endless one whole."""
    response = await http.send(request, stream=True)
    try:
        chunks, size, started = [], 0, time.monotonic()
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise AnswerTooLarge(
                    f"answer over {cap} bytes, reading stopped", status=response.status_code
                )
            if time.monotonic() - started > grace + size / MIN_ANSWER_RATE:
                raise httpx.ReadTimeout("the answer comes too slowly", request=request)
            chunks.append(chunk)
    finally:
        await response.aclose()
    response._content = b"".join(chunks)  # what Response.read() would have set
    return response


def _malformed(what: str, detail: str) -> ServerError:
    return ServerError(f"{what}: malformed answer ({detail})", status=200)


def _parse_json(content: bytes) -> Any:
    """json.loads, with every way a hostile body can make it fail turned into ValueError."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(type(exc).__name__) from None


def _expiration(value: object, what: str) -> int | None:
    """An answer's expiration: a positive whole number of seconds (Cloudflare's schema says
    ``number``, so ``1577836800.0`` is one too)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SAFE_INTEGER:
        raise _malformed(what, "an expiration that is not a positive integer")
    return value


T = TypeVar("T")
_GONE = object()  # a 404 answered where not_found_ok


def _value_of(response: httpx.Response) -> tuple[bytes, int | None] | None:
    """A ``GET values/`` answer: the bytes and the expiration header (digits only); None
    for 404."""
    if response.status_code == 404:
        return None
    header = response.headers.get("expiration")
    if header and not (header.isascii() and header.isdigit()):
        raise _malformed("GET values", "an expiration header that is not an integer")
    return response.content, _expiration(int(header), "GET values") if header else None


log = logging.getLogger("brainbot.kv.rest")


def log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """A scheduled retry, said in one line. stamina's own logging hook puts everything in
    ``extra``, which a plain handler does not print: the console showed a bare
    ``stamina.retry_scheduled``. Only the error's type is named (its text may quote keys)."""
    log.warning(
        "KV request failed (%s): retry %d in %.1f s",
        type(details.caused_by).__name__,
        details.retry_num,
        details.wait_for,
    )


def _retry_hook(exc: Exception) -> bool | float:
    """stamina backoff hook: what to retry, and for how long the server asked us to wait.

    A ``Retry-After`` is honoured, capped at 15 minutes (longer than Cloudflare's lockout;
    a proxy asking for a day is not obeyed), plus up to 10 % jitter so that clients
    released from one lockout do not all return in the same instant."""
    if isinstance(exc, RateLimited):
        if exc.retry_after is None:
            return True
        wait = min(exc.retry_after, MAX_RETRY_AFTER)
        return wait + random.uniform(0, wait * 0.1)
    return isinstance(exc, ServerError | KVTransportError)


class _PartialBulkFailure(Exception):
    """Some keys of a bulk request were reported unsuccessful: send exactly those again."""


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait, from 0 to MAX_RETRY_AFTER (also what a global 429 pauses the budget
    for: an uncapped 1e9 froze the client for 31 years)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
            if at.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are GMT
                at = at.replace(tzinfo=UTC)
            seconds = (at - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _envelope_error(
    response: httpx.Response, redact: Callable[[str], str]
) -> tuple[int | None, str]:
    """The answer's first error: its code, and its message with the token masked (a proxy
    or a hostile server may echo it) before it is cut to 1,000 characters."""
    try:
        body = _parse_json(response.content)
        first = body["errors"][0]
        code = first["code"]
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError
        return code, redact(str(first["message"]))[:1000]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _bulk_item(item: PutItem, now: float) -> bytes:
    """One bulk-write item, validated. The value travels as text when it is UTF-8 and its
    JSON form is not longer than base64 (control bytes escape to six characters each)."""
    _, data, _, _ = validate_put(item, now)
    body: dict[str, Any] = {"key": item.key}
    encoded_b64 = base64.b64encode(data).decode("ascii")
    try:
        text = _compact(data.decode("utf-8"))
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text.encode("utf-8")) <= len(encoded_b64) + 2:
        body["value"] = json.loads(text)
    else:
        body["value"] = encoded_b64
        body["base64"] = True
    if item.expiration is not None:
        body["expiration"] = int(item.expiration)
    if item.expiration_ttl is not None:
        body["expiration_ttl"] = int(item.expiration_ttl)
    if item.metadata is not None:
        body["metadata"] = item.metadata
    return _compact(body).encode("utf-8")


def _batches(sizes: Sequence[int], max_items: int, max_bytes: int) -> builtins.list[range]:
    """Split items into consecutive runs that fit a JSON array of max_items / max_bytes.

    All runs are planned before anything is sent, so an item that fits no request is
    refused before the first write."""
    runs, start, used = [], 0, 2  # "[" and "]"
    for i, size in enumerate(sizes):
        if size + 3 > max_bytes:
            raise BulkTooLarge(
                f"Bulk item {i} alone ({size} bytes as JSON) exceeds the {max_bytes}-byte "
                "request limit."
            )
        if i > start and (i - start >= max_items or used + size + 1 > max_bytes):
            runs.append(range(start, i))
            start, used = i, 2
        used += size + 1
    if start < len(sizes):
        runs.append(range(start, len(sizes)))
    return runs


class CloudflareKV:
    """One Workers KV namespace through Cloudflare's REST API (or a server speaking it)."""

    consistency: Consistency = CLOUDFLARE

    def __init__(
        self,
        *,
        account_id: str,
        namespace_id: str,
        api_token: str,
        base_url: str = DEFAULT_BASE_URL,
        budget: RequestBudget | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        bulk_max_items: int = BULK_WRITE_MAX_ITEMS,
        bulk_max_bytes: int = BULK_WRITE_MAX_BYTES,
        clock: Callable[[], float] = time.time,
        live: bool = False,
        budget_wait: float | None = None,
    ) -> None:
        if not account_id or not namespace_id:
            raise ValueError("account_id and namespace_id are required.")
        url = httpx.URL(base_url)
        if url.scheme != "https" and url.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"Refusing to send the API token over {url.scheme or 'no scheme'}: "
                "use an https:// base URL (plain http only for loopback)."
            )
        self.account_id = account_id
        self.namespace_id = namespace_id
        self.base_url = base_url.rstrip("/")
        self.budget = budget if budget is not None else RequestBudget()
        if retry is None:  # live traffic waits seconds at most, bulk work outlasts a lockout
            wait = budget_wait if budget_wait is not None else 5.0
            retry = (
                RetryPolicy(attempts=3, timeout=wait, wait_initial=0.05, wait_max=wait / 2)
                if live
                else RetryPolicy()
            )
        self.retry = retry
        self.bulk_max_items = bulk_max_items
        self.bulk_max_bytes = bulk_max_bytes
        self.live = live
        """Live traffic: may use the budget's reserved share, and with ``budget_wait`` fails
        fast (``BudgetExhausted``) instead of waiting longer for a slot."""
        self.budget_wait = budget_wait
        self._clock = clock
        self._auth = _BearerToken(api_token)
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=(
                f"{self.base_url}/accounts/{quote(account_id, safe='')}"
                f"/storage/kv/namespaces/{quote(namespace_id, safe='')}/"
            ),
            auth=self._auth,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "brainbot-kv"},
        )

    def __repr__(self) -> str:
        return (
            f"CloudflareKV(base_url={self.base_url!r}, account_id={self.account_id!r}, "
            f"namespace_id={self.namespace_id!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport ---------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, not_found_ok: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send one API request under the budget, retrying what is worth retrying."""
        return await self._parsed(
            method, path, lambda response: response, not_found_ok=not_found_ok, **kwargs
        )

    async def _parsed(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        *,
        not_found_ok: bool = False,
        **kwargs: Any,
    ) -> T:
        """One API request under the budget, retried where worth it, its answer read by
        ``parse`` within the same attempt: an answer ``parse`` finds malformed
        (``ServerError``) is retried like a 5xx. Live traffic does not wait out a long
        ``Retry-After``: it fails fast with ``BudgetExhausted`` (the service answers 503
        with that ``Retry-After``)."""
        hook = self._live_retry_hook if self.live else _retry_hook
        try:
            async for attempt in self.retry.context(hook):
                with attempt:
                    return parse(await self._request_once(method, path, not_found_ok, kwargs))
        except RateLimited as exc:
            if not self.live:
                raise
            raise BudgetExhausted(
                f"{method} {path.split('/', 1)[0]}: rate limited by the service",
                retry_after=exc.retry_after if exc.retry_after is not None else 1.0,
            ) from None
        raise AssertionError("unreachable: the retry policy raises when it gives up")

    def _live_retry_hook(self, exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else 0.0
            return False if wait > (self.budget_wait or 0.0) else _retry_hook(exc)
        return _retry_hook(exc)

    async def _request_once(
        self, method: str, path: str, not_found_ok: bool, kwargs: dict[str, Any]
    ) -> httpx.Response:
        what = f"{method} {path.split('/', 1)[0]}"
        async with self.budget.slot(live=self.live, within=self.budget_wait):
            try:
                response = await self._read_capped(method, path, kwargs)
            except httpx.TimeoutException as exc:
                raise KVTransportError(f"{what}: timed out ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                text = self._auth.redact(f"{exc}")
                raise KVTransportError(f"{what}: {type(exc).__name__}: {text}") from None
            except AnswerTooLarge as exc:
                raise AnswerTooLarge(f"{what}: {exc.message}", status=exc.status) from None
        status = response.status_code
        if status < 300:
            return response
        code, message = _envelope_error(response, self._auth.redact)
        if status == 404 and not_found_ok and code == _NOT_FOUND:
            return response
        error = error_from_response(status, code, f"{what}: {message}")
        if isinstance(error, RateLimited):
            error.retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            if code == _GLOBAL_RATE_LIMIT:
                self.budget.pause(error.retry_after if error.retry_after is not None else 60.0)
        raise error

    async def _read_capped(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        """Send, then read the (decoded) body only up to what a legitimate answer can be,
        and no slower than ``MIN_ANSWER_RATE`` after a grace of 5 x the timeout (httpx's
        timeout is per read: a body dripping a byte at a time never trips it). The upload
        keeps httpx's own timeouts: a 100 MB bulk write may take its time."""
        cap = MAX_VALUE_ANSWER if path.startswith("values/") else MAX_JSON_ANSWER
        request = self._http.build_request(method, path, **kwargs)
        return await read_capped(self._http, request, cap, grace=5 * self._timeout)

    @staticmethod
    def _key_path(kind: str, key: str) -> str:
        key_bytes(key)
        return f"{kind}/{quote(key, safe='')}"

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        """A 2xx answer's JSON envelope; one that is not JSON, or says it failed (a 2xx
        contradicting itself), is a server fault: ``ServerError``, retried."""
        try:
            body = _parse_json(response.content)
        except ValueError:
            kind = self._auth.redact(str(response.headers.get("content-type")))
            raise ServerError(
                f"Expected a JSON envelope, got {kind!r}.", status=response.status_code
            ) from None
        if not isinstance(body, dict) or body.get("success") is not True:
            code, message = _envelope_error(response, self._auth.redact)
            raise ServerError(message, status=response.status_code, code=code)
        return body

    def _result(self, response: httpx.Response) -> Any:
        return self._envelope(response).get("result")

    # -- reads -------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        return (await self.get_many([key]))[key]

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Entry | None]:
        for key in keys:
            key_bytes(key)
        unique = list(dict.fromkeys(keys))
        found: dict[str, Entry | None] = {}
        for start in range(0, len(unique), BULK_GET_MAX_KEYS):
            found.update(await self._bulk_get(unique[start : start + BULK_GET_MAX_KEYS]))
        return {key: found[key] for key in keys}

    async def _bulk_get(self, chunk: builtins.list[str]) -> dict[str, Entry | None]:
        """One ``bulk/get`` with metadata. A chunk the service refuses as a whole (its
        values add up to more than 25 MB, or it will not return a value as text) is
        split in halves, down to single keys read with ``GET values/``."""
        try:
            values = await self._parsed(
                "POST",
                "bulk/get",
                lambda response: self._bulk_values(response, chunk),
                json={"keys": chunk, "type": "text", "withMetadata": True},
            )
        except KVError as exc:
            if not isinstance(exc, KVValidationError | KVRemoteError) or isinstance(
                exc,
                RateLimited
                | ServerError
                | AuthenticationError
                | NamespaceNotFound
                | AnswerTooLarge,
            ):
                raise
            if len(chunk) == 1:
                return {chunk[0]: await self._get_exact(chunk[0], None)}
            half = len(chunk) // 2
            return {**await self._bulk_get(chunk[:half]), **await self._bulk_get(chunk[half:])}
        found: dict[str, Entry | None] = {}
        for key, (entry, exact) in values.items():
            # U+FFFD is what a value that is not UTF-8 turns into: fetch its exact bytes
            found[key] = await self._get_exact(key, entry) if entry and not exact else entry
        return found

    def _bulk_values(
        self, response: httpx.Response, chunk: builtins.list[str]
    ) -> dict[str, tuple[Entry | None, bool]]:
        """A ``bulk/get`` answer: each key's entry, and whether its bytes are exact (a
        value holding U+FFFD may be bytes that are not UTF-8). Exactly one item per key
        asked for, or ``ServerError``."""
        result = self._result(response)
        values = result.get("values") if isinstance(result, dict) else None
        if not isinstance(values, dict) or values.keys() != set(chunk):
            raise _malformed("POST bulk/get", "values are not one per key asked for")
        read: dict[str, tuple[Entry | None, bool]] = {}
        for key in chunk:
            item = values[key]
            if item is None:
                read[key] = (None, True)
                continue
            if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                raise _malformed("POST bulk/get", "an item without a text value")
            text = item["value"]
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\\ud800"): no byte string
                raise _malformed("POST bulk/get", "a value that is not Unicode text") from None
            expiration = _expiration(item.get("expiration"), "POST bulk/get")
            entry = Entry(value=data, expiration=expiration, metadata=item.get("metadata"))
            read[key] = (entry, _REPLACEMENT_CHAR not in text)
        return read

    async def _get_exact(self, key: str, seen: Entry | None) -> Entry | None:
        """Read the value's bytes with ``GET values/`` and its metadata with
        ``GET metadata/``. Two reads can straddle a write; the pair is accepted when the
        expiry and metadata agree with what ``bulk/get`` saw (``seen``), else read again."""
        entry: Entry | None = None
        for _ in range(3):
            value = await self._parsed(
                "GET", self._key_path("values", key), _value_of, not_found_ok=True
            )
            if value is None:
                return None
            meta = await self._parsed(
                "GET", self._key_path("metadata", key), self._metadata_of, not_found_ok=True
            )
            if meta is _GONE:
                return None
            entry = Entry(value[0], value[1], meta)
            if seen is None or (seen.expiration, seen.metadata) == (entry.expiration, meta):
                return entry
            seen = entry  # something changed in between: the next pair must match this one
        return entry

    def _metadata_of(self, response: httpx.Response) -> Any:
        return _GONE if response.status_code == 404 else self._result(response)

    async def list(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_prefix(prefix)
        params: dict[str, str | int] = {"limit": list_limit(limit)}
        if prefix:
            params["prefix"] = prefix
        cursor = check_cursor(cursor)
        if cursor is not None:
            params["cursor"] = cursor
        asked = cursor
        return await self._parsed(
            "GET", "keys", lambda response: self._page(response, asked), params=params
        )

    def _page(self, response: httpx.Response, asked: str | None) -> ListPage:
        """A ``keys`` answer as a page: text names, sane expirations, and a cursor that is
        text, agrees with ``list_complete`` and moves on from ``asked``; else ``ServerError``."""
        envelope = self._envelope(response)
        result = envelope.get("result")
        result = [] if result is None else result
        info = envelope.get("result_info")
        info = {} if info is None else info
        if not isinstance(result, builtins.list) or not isinstance(info, dict):
            raise _malformed("GET keys", "result is not a list of keys")
        keys = []
        for k in result:
            if not isinstance(k, dict) or not isinstance(k.get("name"), str):
                raise _malformed("GET keys", "a key without a name")
            expiration = _expiration(k.get("expiration"), "GET keys")
            keys.append(KeyInfo(name=k["name"], expiration=expiration, metadata=k.get("metadata")))
        next_cursor = info.get("cursor")
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise _malformed("GET keys", "a cursor that is not text")
        complete = info.get("list_complete")
        if complete is not None and (not isinstance(complete, bool) or (complete and next_cursor)):
            raise _malformed("GET keys", "list_complete contradicts the cursor")
        if next_cursor and next_cursor == asked:
            raise _malformed("GET keys", "the cursor asked for came back: no progress")
        return ListPage(keys=keys, cursor=next_cursor or None)

    # -- writes ------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expiration: int | None = None,
        expiration_ttl: int | None = None,
        metadata: JSON = None,
    ) -> None:
        path = self._key_path("values", key)
        data = value_bytes(value)
        meta = metadata_json(metadata)
        absolute_expiration(expiration=expiration, expiration_ttl=expiration_ttl, now=self._clock())
        params = {
            name: int(v)
            for name, v in (("expiration", expiration), ("expiration_ttl", expiration_ttl))
            if v is not None
        }
        if meta is None:
            await self._request(
                "PUT",
                path,
                params=params,
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        else:
            await self._request(
                "PUT",
                path,
                params=params,
                files={"value": ("value", data, "application/octet-stream")},
                data={"metadata": meta},
            )

    async def delete(self, key: str) -> None:
        await self._request("DELETE", self._key_path("values", key))

    async def put_many(self, items: Sequence[PutItem]) -> BulkResult:
        now = self._clock()
        encoded = [_bulk_item(item, now) for item in items]  # validate all before sending
        runs = _batches([len(e) for e in encoded], self.bulk_max_items, self.bulk_max_bytes)
        return await self._bulk(
            "PUT", "bulk", [[(items[i].key, encoded[i]) for i in run] for run in runs]
        )

    async def delete_many(self, keys: Sequence[str]) -> BulkResult:
        encoded = [_compact(key_bytes(k).decode("utf-8")).encode("utf-8") for k in keys]
        runs = [
            range(start, min(start + BULK_DELETE_MAX_KEYS, len(keys)))
            for start in range(0, len(keys), BULK_DELETE_MAX_KEYS)
        ]
        return await self._bulk(
            "POST", "bulk/delete", [[(keys[i], encoded[i]) for i in run] for run in runs]
        )

    async def _bulk(
        self, method: str, path: str, batches: builtins.list[builtins.list[tuple[str, bytes]]]
    ) -> BulkResult:
        """Send the batches in order. If one still fails after every retry (service down,
        lockout outlasting the policy), it and all later batches are reported as
        unsuccessful rather than raised, so the caller keeps the per-key outcome of the
        batches already written."""
        failed: builtins.list[str] = []
        total = sum(len(b) for b in batches)
        for n, batch in enumerate(batches):
            try:
                failed += await self._bulk_until_done(method, path, batch)
            except (RateLimited, ServerError, KVTransportError, AnswerTooLarge):
                failed += [key for later in batches[n:] for key, _ in later]
                break
        return BulkResult(total - len(failed), tuple(failed))

    async def _bulk_until_done(
        self, method: str, path: str, pending: builtins.list[tuple[str, bytes]]
    ) -> builtins.list[str]:
        """Send one bulk request, then resend exactly its unsuccessful keys, with backoff.

        Returns the keys still unsuccessful once the retry policy is spent."""
        try:
            async for attempt in self.retry.context(_PartialBulkFailure):
                with attempt:
                    body = b"[" + b",".join(part for _, part in pending) + b"]"
                    unsuccessful = await self._parsed(
                        method,
                        path,
                        lambda response: self._unsuccessful(response, f"{method} {path}"),
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    pending = [p for p in pending if p[0] in unsuccessful]
                    if pending:
                        raise _PartialBulkFailure
        except _PartialBulkFailure:
            pass
        return [key for key, _ in pending]

    def _unsuccessful(self, response: httpx.Response, what: str) -> set[str]:
        """A bulk write answer's ``unsuccessful_keys``: a list of key names, or ``ServerError``."""
        result = self._result(response)
        if result is not None and not isinstance(result, dict):
            raise _malformed(what, "unsuccessful_keys is not a key list")
        listed = None if result is None else result.get("unsuccessful_keys")
        if listed is None:
            return set()
        if not isinstance(listed, builtins.list) or not all(isinstance(k, str) for k in listed):
            raise _malformed(what, "unsuccessful_keys is not a key list")
        return set(listed)
