"""The gateway transport against our Worker in Miniflare: signed batches, concurrent
operations sharing one request, retries as the REST client's, routing by purpose, secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from brainbot.composition import open_namespace
from brainbot.config import Settings
from brainbot.errors import ClockSkew
from brainbot.kv import (
    CloudflareKV,
    EmbeddedKV,
    Entry,
    GatewayKV,
    KVError,
    KVRemoteError,
    KVTransportError,
    PutItem,
    RetryPolicy,
)
from brainbot.kv.errors import AnswerTooLarge
from brainbot.kv.gateway import (
    LIST_ENTRY_ANSWER,
    MAX_ANSWER_BYTES,
    MAX_LIST_ANSWER,
    signed_headers,
)
from tests.support.kv import Endless
from tests.support.processes import Service


async def test_concurrent_operations_share_one_signed_request(
    gateway: Service, gateway_secret: str
) -> None:
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        await kv.put_many([PutItem(f"batch:{i}", bytes([i]) * 3) for i in range(100)])
        before = kv.requests
        got = await asyncio.gather(*(kv.get(f"batch:{i}") for i in range(100)))
        assert got == [Entry(bytes([i]) * 3) for i in range(100)]
        assert kv.requests - before == 1  # 100 gets = 200 KV operations, one invocation
        before = kv.requests
        await asyncio.gather(*(kv.get(f"batch:{i % 100}") for i in range(600)))
        assert kv.requests - before == 2  # split at the Worker's 1,000 KV operations
        await kv.delete_many([f"batch:{i}" for i in range(100)])


async def test_a_wrong_secret_is_refused_and_not_retried(
    gateway: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "the-wrong-secret-" + "y" * 16
    async with GatewayKV(gateway.url, secret) as kv:
        with pytest.raises(KVRemoteError) as caught:
            await kv.get("k")
        assert caught.value.status == 401
        assert kv.requests == 1
        assert secret not in repr(kv) + repr(vars(kv)) + str(caught.value)
    assert secret not in caplog.text


async def test_server_errors_are_retried_like_the_rest_clients(
    gateway: Service, gateway_secret: str
) -> None:
    class FirstTwoFail(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.real, self.calls = httpx.AsyncHTTPTransport(), 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            if self.calls <= 2:
                return httpx.Response(503, json={"error": "down"})
            return await self.real.handle_async_request(request)

    transport = FirstTwoFail()
    async with GatewayKV(
        gateway.url, gateway_secret, transport=transport, retry=RetryPolicy(attempts=5)
    ) as kv:
        await kv.put("retried", b"\x00\xff")
        assert await kv.get("retried") == Entry(b"\x00\xff")
        await kv.delete("retried")
    assert transport.calls == 5  # 2 refused, then the put, the get and the delete


def test_live_traffic_goes_to_the_gateway_bulk_loads_to_rest(tmp_path: object) -> None:
    settings = Settings(  # type: ignore[call-arg]
        BRAINBOT_DATA_DIR=tmp_path,
        BRAINBOT_KV_GATEWAY_URL="https://gateway.example.workers.dev",
        BRAINBOT_KV_GATEWAY_SECRET="s" * 32,
        CLOUDFLARE_ACCOUNT_ID="acc",
        CLOUDFLARE_KV_NAMESPACE_ID="ns",
        CLOUDFLARE_KV_API_TOKEN="t" * 32,
    )
    assert isinstance(open_namespace(settings, purpose="live"), GatewayKV)
    assert isinstance(open_namespace(settings, purpose="bulk"), CloudflareKV)
    local = Settings(BRAINBOT_DATA_DIR=tmp_path)  # type: ignore[call-arg]
    assert isinstance(open_namespace(local, purpose="live"), EmbeddedKV)
    with pytest.raises(ValueError, match="plain http"):
        GatewayKV("http://gateway.example.com", "s" * 32)


# -- attacks on the gateway's authentication (each refused before: accepted) ---------------


def _batch(key: str, value: bytes) -> bytes:
    op = {"op": "put", "key": key, "value": base64.b64encode(value).decode()}
    return json.dumps({"ops": [op]}).encode()


async def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(url, content=body, headers=headers)


async def test_a_captured_batch_replayed_is_refused(gateway: Service, gateway_secret: str) -> None:
    """Before: a batch captured before a logout, replayed after it, brought the session back."""
    url = gateway.url + "/v1/batch"
    body = _batch("session:replayed", b"alive")
    headers = signed_headers(gateway_secret, "POST", url, body)
    assert (await _post(url, body, headers)).status_code == 200
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        await kv.delete("session:replayed")  # the logout
        again = await _post(url, body, headers)
        assert again.status_code == 401
        assert "replayed" in again.json()["error"]
        assert await kv.get("session:replayed") is None


@pytest.mark.parametrize(
    "retarget",
    ["path", "host", "namespace", "method-path", "body", "old", "future"],
)
async def test_retargeted_altered_or_stale_batches_are_refused(
    gateway: Service, gateway_secret: str, retarget: str
) -> None:
    url = gateway.url + "/v1/batch"
    body = _batch("retarget:k", b"v")
    sign_url, namespace, stamp, sent = url, "default", None, body
    if retarget == "path":  # signed for the clock endpoint, sent to the batch endpoint
        sign_url = gateway.url + "/__sim/clock"
    elif retarget == "host":  # signed for another deployment's host
        sign_url = "https://other-deployment.example.workers.dev/v1/batch"
    elif retarget == "namespace":  # another deployment sharing the secret
        namespace = "staging"
    elif retarget == "method-path":
        sign_url = gateway.url + "/v1/batch/"
    elif retarget == "body":  # the signed body, altered in flight
        sent = _batch("retarget:k", b"evil")
    elif retarget == "old":
        stamp = int(time.time()) - 45
    else:
        stamp = int(time.time()) + 45
    headers = signed_headers(gateway_secret, "POST", sign_url, body, namespace, timestamp=stamp)
    answer = await _post(url, sent, headers)
    assert answer.status_code == 401, answer.text
    if retarget in ("old", "future"):
        assert answer.json()["error"].startswith("clock skew")
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        assert await kv.get("retarget:k") is None


async def test_the_client_says_clock_skew_when_its_clock_is_off(
    gateway: Service, gateway_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import brainbot.kv.gateway as transport

    real = time.time
    monkeypatch.setattr(transport.time, "time", lambda: real() - 120)  # fault: a slow clock
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        with pytest.raises(ClockSkew, match=r"clock skew.*NTP"):
            await kv.get("k")
        assert kv.requests == 1  # not retried


def _raw_request(url: str, headers: dict[str, str], body_prefix: bytes) -> tuple[int, float]:
    """Send headers and only the first bytes of a body; the status and how long it took."""
    parsed = httpx.URL(url)
    lines = [f"POST {parsed.raw_path.decode()} HTTP/1.1", f"Host: {parsed.netloc.decode()}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    started = time.monotonic()
    with socket.create_connection((parsed.host, parsed.port or 80), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body_prefix)
        answer = sock.recv(4096)
    status = int(answer.split(b" ", 2)[1])
    return status, time.monotonic() - started


async def test_a_forged_signature_on_a_large_body_is_refused_before_the_body_is_read(
    gateway: Service, gateway_secret: str
) -> None:
    """Before: the Worker buffered up to 100 MB and hashed it before checking anything."""
    url = gateway.url + "/v1/batch"
    forged = signed_headers("not-the-secret-" + "x" * 20, "POST", url, b"")
    size = 30 * 1000 * 1000  # under the Worker's body limit: only the signature refuses it
    headers = {**forged, "Content-Length": str(size), "Content-Type": "application/json"}
    # 1 KB of the 30 MB is sent: the answer comes without the rest
    status, _ = await asyncio.to_thread(_raw_request, url, headers, b"{" * 1000)
    assert status == 401
    # a genuine signature on a body over the limit: refused by its Content-Length (the
    # body is drained, not buffered, so the genuine client reads the answer)
    body = b" " * (40 * 1000 * 1000)
    answer = await _post(url, body, signed_headers(gateway_secret, "POST", url, body))
    assert answer.status_code == 413
    assert "exceeds the limit" in answer.json()["error"]


async def test_an_oversized_batch_is_split_not_failed(
    gateway: Service, gateway_secret: str
) -> None:
    """Before: 80 concurrent 1 MiB puts went in one 111 MB request, answered 413, and every
    operation in it failed, an unrelated small put too."""
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        big = [PutItem(f"big:{i}", bytes([i]) * (1024 * 1024)) for i in range(40)]
        await asyncio.gather(*(kv.put(i.key, i.value) for i in big), kv.put("small", b"s"))
        assert kv.requests >= 40  # each large value alone (far under the Worker's limit)
        assert await kv.get("small") == Entry(b"s")
        assert (await kv.get("big:39")).value == bytes([39]) * (1024 * 1024)  # type: ignore[union-attr]
    # a client without a byte cap: the Worker answers 413 and the batch is halved until
    # it fits; nothing fails
    async with GatewayKV(gateway.url, gateway_secret, max_batch_bytes=10**9) as kv:
        half = 512 * 1024
        items = [PutItem(f"half:{i}", bytes([i]) * half) for i in range(80)]
        await asyncio.gather(*(kv.put(i.key, i.value) for i in items), kv.put("small", b"t"))
        assert kv.requests >= 3  # refused whole, then the halves (and theirs)
        assert await kv.get("small") == Entry(b"t")
        assert (await kv.get("half:79")).value == bytes([79]) * half  # type: ignore[union-attr]
        await kv.delete_many([i.key for i in items] + [f"big:{i}" for i in range(40)])


# -- hostile batches (each acknowledged, stalled or answered past the isolate's memory before)


def _signed_post(url: str, secret: str, body: bytes) -> httpx.Response:
    headers = signed_headers(secret, "POST", url + "/v1/batch", body)
    return httpx.post(url + "/v1/batch", content=body, headers=headers, timeout=60)


def _ops(url: str, secret: str, ops: list[dict[str, object]]) -> list[dict[str, object]]:
    answer = _signed_post(url, secret, json.dumps({"ops": ops}).encode())
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]  # type: ignore[no-any-return]


def test_an_unsigned_chunked_body_is_refused_without_reading_it(gateway: Service) -> None:
    """Measured: with Transfer-Encoding: chunked (no Content-Length) the Worker drains the
    whole unauthenticated body before answering 401/404/411: 200 MiB read in 0.9 s, and a
    body that never ends holds the invocation open with no answer."""
    url = httpx.URL(gateway.url)
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        sock.sendall(
            f"POST /v1/batch HTTP/1.1\r\nHost: {url.host}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + b"400\r\n"
            + b"{" * 1024
            + b"\r\n"  # 1 KiB of a body that never ends
        )
        try:
            answer = sock.recv(64)
        except TimeoutError:
            pytest.fail("no answer in 5 s: the Worker is reading an unauthenticated body")
    assert answer.split(b" ")[1] in (b"401", b"411")


def test_a_lone_surrogate_key_cannot_stall_the_write_behind(
    own_gateway: Service, gateway_secret: str
) -> None:
    """Measured: xcommit of the key "\\ud800x" (JSON escape, ~60 bytes) is acknowledged; its
    stored name does not read back equal (SQLite keeps U+FFFD), its d: entry is never
    cleared, the alarm loops (7 runs in ~10 ms) then stops: no key of the shard reaches KV
    any more (kv_writes stays 0). A plain put of that key gets 400 from the binding."""
    service, secret = own_gateway, gateway_secret
    body = b'{"ops":[{"op":"xcommit","write":[["\\ud800x",{"value":"eA=="}]]}]}'
    poisoned = _signed_post(service.url, secret, body).json()["results"][0]
    assert _ops(service.url, secret, [{"op": "xcommit", "write": [["after", {"value": "eA=="}]]}])
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        stats = _ops(service.url, secret, [{"op": "xstats", "key": "after"}])[0]
        if stats["kv_writes"]:
            break
        time.sleep(0.5)
    assert poisoned["ok"] is False, poisoned
    assert poisoned["status"] == 400
    assert stats["kv_writes"] == 1, f"a later key never reached KV: {stats}"


@pytest.mark.parametrize(
    "entry",
    [
        {"value": "", "expiration": 2**53 - 1},
        {"value": "", "expiration_ttl": 10**20},
        {"value": "", "expiration_ttl": 2**31},
        {"value": "", "expiration_ttl": "60abc"},
    ],
)
def test_an_xcommit_kv_would_refuse_is_not_acknowledged(
    own_gateway: Service, gateway_secret: str, entry: dict[str, object]
) -> None:
    """Measured: acknowledged ({"ok": true}); the write-behind then fails ("Value out of
    range ... 2147483647") every 60 s forever, the key stays dirty and is never evicted.
    A plain put of the same entry is refused (400 per op, or 400 for the batch)."""
    service, secret = own_gateway, gateway_secret
    body = json.dumps({"ops": [{"op": "xcommit", "write": [["exp", entry]]}]}).encode()
    answer = _signed_post(service.url, secret, body)
    refused = answer.status_code == 400 or answer.json()["results"][0]["ok"] is False
    assert refused, answer.text


async def test_a_batch_of_gets_is_not_answered_past_the_workers_memory(
    gateway: Service, gateway_secret: str
) -> None:
    """Measured: four 25 MiB values, fetched together by get_many, come back in ONE
    response of 139,810,385 bytes (workerd RSS 415 -> 716 MB); read_exact the same through
    the Durable Object. A deployed isolate has 128 MB: the batch would fail every time."""
    sizes: list[int] = []

    async def measure(response: httpx.Response) -> None:
        await response.aread()
        sizes.append(len(response.content))

    async with GatewayKV(gateway.url, gateway_secret) as kv:
        keys = [f"review:huge:{i}" for i in range(4)]
        for i, key in enumerate(keys):
            await kv.put(key, bytes([65 + i]) * (25 * 1024 * 1024))
        kv._http.event_hooks["response"].append(measure)
        got = await kv.get_many(keys)
        alone = await kv.read_exact(keys[:1])
        with pytest.raises(KVError, match="together"):  # one atomic read: cannot be split
            await kv.read_exact(keys[:2])
        kv._http.event_hooks["response"].clear()
        await kv.delete_many(keys)
    assert [e.value[:1] if e else None for e in got.values()] == [b"A", b"B", b"C", b"D"]
    assert all(e is not None and len(e.value) == 25 * 1024 * 1024 for e in got.values())
    assert alone[keys[0]] == got[keys[0]]
    assert max(sizes) <= 36 * 1000 * 1000, f"responses of {sizes} bytes"


async def test_an_answer_past_its_bound_never_hides_an_applied_commit(
    gateway: Service, gateway_secret: str
) -> None:
    """Reviewed: a get, an xread and a commit in one batch made a 70 MB answer (each
    coordinator shard answered its first op whatever its size), and a commit already
    applied could be answered ``retry`` (the budget went negative)."""
    big = 25 * 1024 * 1024
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        await kv.put("bound:a", b"a" * big)
        await kv.put("bound:b", b"b" * big)
        commit = {"op": "xcommit", "write": [["bound:c", {"value": "Yw=="}]]}  # no txid
        ops = [{"op": "get", "key": "bound:a"}, {"op": "xread", "keys": ["bound:b"]}, commit]
        answer = _signed_post(gateway.url, gateway_secret, json.dumps({"ops": ops}).encode())
        got, read, committed = answer.json()["results"]
        assert len(answer.content) <= 36 * 1000 * 1000  # one value's worth, not two
        assert len(base64.b64decode(got["value"])) == big
        assert read["retry"] is True  # asked again by GatewayKV; here: not answered
        assert committed["ok"] is True  # applied, and said so
        assert (await kv.read_exact(["bound:c"]))["bound:c"] == Entry(b"c")
        assert (await kv.read_exact(["bound:b"]))["bound:b"] == Entry(b"b" * big)
        await kv.delete_many(["bound:a", "bound:b"])
        await kv.write_exact({"bound:c": None})


@pytest.mark.parametrize("txid", [12345, "NOT-HEX", None, ["a" * 32]])
def test_a_malformed_txid_is_refused_not_ignored(
    own_gateway: Service, gateway_secret: str, txid: object
) -> None:
    """Reviewed: a txid that is not 32 hex digits was ignored: the commit applied, and its
    retry (the same txid) applied again, so an idempotent write was not. Refused now,
    with nothing stored."""
    service, secret = own_gateway, gateway_secret
    commit = {"op": "xcommit", "txid": txid, "write": [["txid:k", {"value": "eA=="}]]}
    first, again = _ops(service.url, secret, [commit]), _ops(service.url, secret, [commit])
    [read] = _ops(service.url, secret, [{"op": "xread", "keys": ["txid:k"]}])
    assert (first[0]["ok"], first[0]["status"]) == (False, 400), first
    assert (again[0]["ok"], again[0]["status"]) == (False, 400), again
    assert (read["versions"], read["entries"]) == ([0], [None]), read


def test_a_key_written_twice_in_one_commit_is_refused(
    own_gateway: Service, gateway_secret: str
) -> None:
    """Reviewed: acknowledged; both values' chunks were stored under the last one's meta,
    the longer one's tail never deleted (storage leaked for good). GatewayKV sends a key
    once per commit; a client that sends it twice gets 400 and nothing is stored."""
    service, secret = own_gateway, gateway_secret
    long = base64.b64encode(b"x" * (3 * 1024 * 1024)).decode()
    write = [["twice", {"value": long}], ["twice", {"value": "eA=="}]]
    [answer] = _ops(service.url, secret, [{"op": "xcommit", "write": write}])
    [read] = _ops(service.url, secret, [{"op": "xread", "keys": ["twice"]}])
    assert (answer["ok"], answer["status"]) == (False, 400), answer
    assert (read["versions"], read["entries"]) == ([0], [None]), read


async def test_many_big_list_pages_at_once_are_answered(
    gateway: Service, gateway_secret: str
) -> None:
    """Reviewed: the answer cap assumed one value's worth per answer, but the Worker does
    not budget list pages: 60 concurrent lists of 1,000 long names with 950-byte metadata
    made one 90 MB answer, refused whole (``AnswerTooLarge``, not retried, every op of the
    batch failed). The client now keeps a batch's list pages within MAX_LIST_ANSWER."""
    prefix = f"pages:{time.monotonic_ns()}:"
    meta = {"c": "m" * 940}
    names = [prefix + f"{i:04d}".ljust(470, "n") for i in range(1000)]
    async with GatewayKV(gateway.url, gateway_secret) as kv:
        await kv.put_many([PutItem(name, b"", metadata=meta) for name in names])
        before = kv.requests
        pages = await asyncio.gather(*(kv.list(prefix=prefix, limit=1000) for _ in range(60)))
        sent = kv.requests - before
        await kv.delete_many(names)
    assert all([k.name for k in page.keys] == names for page in pages)
    assert all(page.keys[0].metadata == meta for page in pages)
    assert sent >= 60 * 1000 * LIST_ENTRY_ANSWER // MAX_LIST_ANSWER  # 8 pages a request


async def test_an_endless_or_dripping_gateway_answer_is_cut_off() -> None:
    """Reviewed: GatewayKV read every answer whole (``response.json()``), however long
    and however slowly it came: a broken proxy's endless 200 grew the bot's memory
    without bound. Now cut like the REST client's answers."""
    stream = Endless(400 << 20)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    async with GatewayKV(
        "http://127.0.0.1:1", "s" * 32, transport=transport, retry=RetryPolicy(attempts=1)
    ) as kv:
        with pytest.raises(AnswerTooLarge):
            await kv.get("k")
    assert stream.sent <= MAX_ANSWER_BYTES + (1 << 20)
    assert MAX_ANSWER_BYTES < 128 << 20  # no more than a Worker isolate holds

    class Drip(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:  # a byte at a time, each within httpx's per-read timeout
                await asyncio.sleep(0.05)
                yield b" "

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Drip()))
    async with GatewayKV(
        "http://127.0.0.1:1",
        "s" * 32,
        transport=transport,
        retry=RetryPolicy(attempts=1),
        timeout=0.1,
    ) as kv:
        with pytest.raises(KVTransportError, match="timed out"):
            await kv.get("k")


@pytest.mark.parametrize("answer", [b"[]", b'"oops"', b"<html>"])
async def test_a_malformed_gateway_answer_raises_a_typed_error(answer: bytes) -> None:
    """Measured: a JSON list or string answer raises AttributeError, a 200 HTML page
    JSONDecodeError: not brainbot's KVError, so callers catching KVError crash."""
    for status in (200, 502):
        transport = httpx.MockTransport(lambda req, s=status: httpx.Response(s, content=answer))
        async with GatewayKV(
            "http://127.0.0.1:1", "s" * 32, transport=transport, retry=RetryPolicy(attempts=1)
        ) as kv:
            with pytest.raises(KVError):
                await kv.get("k")


def test_a_commit_retried_after_its_mark_may_be_gone_is_refused_not_applied_again(
    own_gateway: Service, gateway_secret: str
) -> None:
    """The object keeps a commit's txid 5 minutes; GatewayKV retries a commit up to 15
    (a long outage, a ``Retry-After``). Before: a commit first sent longer ago than the
    mark is kept was applied like a new one, so a retry whose first send had been applied
    (answer lost) applied it twice (an INCR counted twice: its read version had changed,
    so the client ran the change again). Now the commit says when it was first sent and
    one older than 4 minutes is refused (409), nothing stored."""
    service, secret = own_gateway, gateway_secret
    old = int(time.time() * 1000) - 6 * 60 * 1000
    commit = {
        "op": "xcommit",
        "txid": secrets.token_hex(16),
        "sent": old,
        "write": [["late:k", {"value": "eA=="}]],
    }
    [answer] = _ops(service.url, secret, [commit])
    [read] = _ops(service.url, secret, [{"op": "xread", "keys": ["late:k"]}])
    assert (answer["ok"], answer["status"]) == (False, 409), answer
    assert (read["versions"], read["entries"]) == ([0], [None]), read
    fresh = {**commit, "txid": secrets.token_hex(16), "sent": int(time.time() * 1000)}
    assert _ops(service.url, secret, [fresh])[0]["ok"] is True
