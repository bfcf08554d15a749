"""Fault injection: hostile, broken or surprising answers to the REST client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from brainbot.kv import (
    Entry,
    KVError,
    KVTransportError,
    PutItem,
    RequestBudget,
    RetryPolicy,
    ServerError,
    iter_keys,
)
from brainbot.kv.rest import CloudflareKV
from tests.support.kv import Endless

TOKEN = "secret-token-abc123"


def kv_for(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> CloudflareKV:
    kw.setdefault("budget", RequestBudget(10**9, 1.0))
    kw.setdefault("retry", RetryPolicy(attempts=3))
    return CloudflareKV(
        account_id="a",
        namespace_id="n",
        api_token=TOKEN,
        base_url="https://cf.test/client/v4",
        transport=httpx.MockTransport(handler),
        **kw,
    )


def ok(result: Any, **extra: Any) -> httpx.Response:
    body = {"success": True, "errors": [], "result": result, **extra}
    return httpx.Response(200, content=json.dumps(body).encode())  # ASCII: lone surrogates too


def bulk_get_answer(values: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: ok({"values": values})


# -- bulk get: broken shapes must be typed errors --------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        [],  # result a list
        {"values": []},  # values a list
        {"values": {"k": "plain"}},  # item not an object
        {"values": {"k": {"metadata": None}}},  # value missing
        {"values": {"k": {"value": 5}}},  # value not text
        {"values": {"k": {"value": None}}},  # value null inside an object
        {"values": {"k": {"value": "\ud800"}}},  # a lone surrogate: UnicodeEncodeError
    ],
)
async def test_a_broken_bulk_get_answer_is_a_typed_error(result: Any) -> None:
    async with kv_for(lambda r: ok(result)) as kv:
        with pytest.raises(KVError):
            await kv.get("k")


async def test_a_bulk_get_answer_missing_a_key_is_not_read_as_absent() -> None:
    async with kv_for(bulk_get_answer({"a": {"value": "1"}})) as kv:
        with pytest.raises(KVError):
            await kv.get_many(["a", "b"])


@pytest.mark.parametrize("expiration", ["soon", 1.5, True, -5, 10**30, [1]])
async def test_a_bulk_get_expiration_that_is_not_a_sane_int_is_refused(expiration: Any) -> None:
    async with kv_for(bulk_get_answer({"k": {"value": "v", "expiration": expiration}})) as kv:
        with pytest.raises(KVError):
            await kv.get("k")


@pytest.mark.parametrize("header", ["soon", "1e9", "-5", "9" * 30])
async def test_an_exact_read_expiration_header_that_is_not_a_sane_int_is_refused(
    header: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/bulk/get"):
            return ok({"values": {"k": {"value": "\ufffd", "metadata": None}}})
        if "/values/" in path:
            return httpx.Response(200, content=b"\xff", headers={"expiration": header})
        return ok(None)

    async with kv_for(handler) as kv:
        with pytest.raises(KVError):
            await kv.get("k")


# -- envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"success": false, "errors": [{"code": 1e999, "message": "x"}]}',  # int(inf)
        b"[" * 100_000 + b"]" * 100_000,  # nesting bomb: RecursionError
    ],
)
async def test_a_hostile_error_envelope_is_a_typed_error(body: bytes) -> None:
    answer = lambda r: httpx.Response(400, content=body)  # noqa: E731
    async with kv_for(answer) as kv:
        with pytest.raises(KVError):
            await kv.delete("k")


async def test_a_json_nesting_bomb_in_a_200_is_a_typed_error() -> None:
    answer = lambda r: httpx.Response(200, content=b"[" * 100_000)  # noqa: E731
    async with kv_for(answer) as kv:
        with pytest.raises(KVError):
            await kv.list()


async def test_success_as_the_string_false_is_not_success() -> None:
    answer = lambda r: httpx.Response(200, json={"success": "false", "result": None})  # noqa: E731
    async with kv_for(answer) as kv:
        result = await kv.put_many([PutItem("k", b"v")])
    assert result.unsuccessful_keys == ("k",)  # was: reported written


@pytest.mark.parametrize(
    "retry_after", ["Wed, 21 Oct 2015 07:28:00 -0000", "Wed, 21 Oct 2015 07:28:00"]
)
async def test_a_retry_after_date_without_a_zone_is_not_a_type_error(retry_after: str) -> None:
    answers = iter(
        [
            httpx.Response(
                429,
                headers={"Retry-After": retry_after},
                json={"success": False, "errors": [{"code": 10048, "message": "slow"}]},
            ),
            ok(None),
        ]
    )
    async with kv_for(lambda r: next(answers)) as kv:
        await kv.delete("k")


async def test_a_global_429_with_a_huge_retry_after_does_not_pause_the_budget_for_ever() -> None:
    slept: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    answers = iter(
        [
            httpx.Response(
                429,
                headers={"Retry-After": "1000000000"},
                json={"success": False, "errors": [{"code": 971, "message": "lockout"}]},
            ),
            ok(None),
        ]
    )
    budget = RequestBudget(10**9, 1.0, sleep=sleep, clock=lambda: now[0])
    async with kv_for(lambda r: next(answers), budget=budget) as kv:
        await kv.delete("k")
    assert max(slept) <= 1000  # was 1e9 s: the client sleeps for 31 years


# -- list ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "info"),
    [
        ({"name": "k"}, {}),  # result an object, not a list
        (["k"], {}),  # names, not objects
        ([{"nom": "k"}], {}),  # no name
        ([{"name": 5}], {}),  # name not text
        ([{"name": "k", "expiration": "soon"}], {}),
        ([], "cursor"),  # result_info not an object
        ([], {"cursor": 5}),  # cursor not text
        ([], {"cursor": "c2", "list_complete": True}),  # contradictory
    ],
)
async def test_a_broken_list_page_is_a_typed_error(result: Any, info: Any) -> None:
    async with kv_for(lambda r: ok(result, result_info=info)) as kv:
        with pytest.raises(KVError):
            await kv.list()


async def test_a_cursor_that_repeats_for_ever_ends() -> None:
    requests = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal requests
        requests += 1
        cursor = "same" if requests < 1000 else ""  # the probe's own brake
        return ok([], result_info={"cursor": cursor})

    async with kv_for(handler) as kv:
        with pytest.raises(ServerError):
            async for _ in iter_keys(kv):
                pass
    assert requests == 1 + 3  # the first page, then the repeat as often as the policy allows


async def test_a_cursor_cycle_ends() -> None:
    """A -> B -> A: each page moves on from the cursor it was asked for, the listing does not."""
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("cursor"))
        following = {None: "A", "A": "B", "B": "A"}[asked[-1]] if len(asked) < 100 else ""
        return ok([{"name": f"n{len(asked)}"}], result_info={"cursor": following})

    async with kv_for(handler) as kv:
        with pytest.raises(ServerError, match="came back"):
            async for _ in iter_keys(kv):
                pass
    assert asked == [None, "A", "B"]


async def test_a_malformed_answer_is_retried_like_a_server_error() -> None:
    answers = [ok([]), ok({"values": {"k": {"value": "v", "metadata": None}}})]
    async with kv_for(lambda r: answers.pop(0)) as kv:
        assert (await kv.get("k")) == Entry(b"v")  # the second answer was asked for
    assert answers == []


async def test_an_expiration_written_as_a_whole_float_is_an_expiration() -> None:
    """Cloudflare's schema types it ``number`` (its example: 1577836800.0)."""
    item = {"value": "v", "expiration": 1577836800.0, "metadata": None}
    async with kv_for(bulk_get_answer({"k": item})) as kv:
        assert (await kv.get("k")) == Entry(b"v", 1577836800)


# -- bulk writes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        [],  # result a list
        {"unsuccessful_keys": 5},
        {"unsuccessful_keys": [{"key": "k"}]},
        {"unsuccessful_keys": "k"},  # a string: set("k") == {"k"} by accident
    ],
)
async def test_a_broken_bulk_write_answer_is_reported_not_a_crash(result: Any) -> None:
    async with kv_for(lambda r: ok(result)) as kv:
        outcome = await kv.put_many([PutItem("k", b"v"), PutItem("kk", b"v")])
    assert outcome.unsuccessful_keys == ("k", "kk")


async def test_unsuccessful_keys_naming_keys_not_sent_are_ignored() -> None:
    sent: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append([i if isinstance(i, str) else i["key"] for i in json.loads(request.content)])
        return ok({"successful_key_count": 1, "unsuccessful_keys": ["ghost"]})

    async with kv_for(handler) as kv:
        result = await kv.put_many([PutItem("k", b"v")])
        deleted = await kv.delete_many(["k"])
    assert result.ok
    assert deleted.ok
    assert sent == [["k"], ["k"]]  # one request each


async def test_a_200_with_success_false_mid_bulk_keeps_the_per_key_outcome() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if b'"k1"' in request.content:
            return httpx.Response(200, json={"success": False, "errors": [], "result": None})
        return ok({"successful_key_count": 1, "unsuccessful_keys": []})

    async with kv_for(handler, bulk_max_items=1) as kv:
        result = await kv.put_many([PutItem("k0", b"v"), PutItem("k1", b"v")])
    assert result.successful_key_count == 1
    assert result.unsuccessful_keys == ("k1",)


# -- memory --------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["bulk/get", "values/"])
async def test_an_endless_body_is_not_read_into_memory(route: str) -> None:
    stream = Endless(400 << 20)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/bulk/get") and route == "values/":
            return ok({"values": {"k": {"value": "\ufffd", "metadata": None}}})
        return httpx.Response(200, stream=stream)

    async with kv_for(handler, retry=RetryPolicy(attempts=1)) as kv:
        with pytest.raises(KVError):
            await kv.get("k")
    # a 25 MiB value (JSON-escaped at most 6x in bulk/get) plus envelope, not 400 MB
    assert stream.sent <= (27 << 20 if route == "values/" else 152 << 20)


async def test_an_answer_that_drips_in_is_cut_off() -> None:
    class Drip(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:  # a byte at a time, each within httpx's per-read timeout
                await asyncio.sleep(0.05)
                yield b" "

    async with kv_for(lambda r: httpx.Response(200, stream=Drip()), timeout=0.1) as kv:
        with pytest.raises(KVTransportError, match="timed out"):
            await kv.get("k")


@pytest.mark.parametrize("status", [200, 400])
async def test_an_echoed_token_is_masked_even_where_the_message_is_cut(status: int) -> None:
    message = "x" * 990 + f"Bearer {TOKEN}"  # straddles the 1,000-character cut
    answer = {"success": False, "errors": [{"code": 1, "message": message}], "result": None}
    async with kv_for(lambda r: httpx.Response(status, json=answer)) as kv:
        with pytest.raises(KVError) as caught:
            await kv.delete_many(["k"]) if status == 400 else await kv.get("k")
    assert TOKEN[:6] not in str(caught.value)


async def test_no_secret_in_errors() -> None:
    answer = lambda r: httpx.Response(  # noqa: E731
        400, json={"success": False, "errors": [{"code": 1, "message": r.headers["authorization"]}]}
    )
    async with kv_for(answer) as kv:
        with pytest.raises(KVError) as caught:
            await kv.delete("k")
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)
