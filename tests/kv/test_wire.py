"""The wire format, checked with raw HTTP on both REST servers we run in tests:
`brainbot kv serve` must answer exactly like our Worker inside Miniflare, which runs on
Cloudflare's own KV simulator. Same paths, envelopes, status codes and error codes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.processes import Service

pytestmark = pytest.mark.parametrize("server", ["kv_serve", "miniflare"], indirect=True)


@pytest.fixture
async def server(
    request: pytest.FixtureRequest, api_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    service: Service = request.getfixturevalue(
        "kv_server" if request.param == "kv_serve" else "miniflare"
    )
    namespace = uuid.uuid4().hex if request.param == "kv_serve" else "miniflare"
    base = f"{service.url}/accounts/test-account/storage/kv/namespaces/{namespace}/"
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {api_token}"}
    ) as http:
        keys = (await http.get("keys")).json()["result"]
        if keys:
            await http.post("bulk/delete", json=[k["name"] for k in keys])
        yield http


def error_of(response: httpx.Response) -> tuple[int, int]:
    body = response.json()
    assert body["success"] is False
    assert body["result"] is None
    return response.status_code, body["errors"][0]["code"]


async def test_no_token_no_answer(server: httpx.AsyncClient) -> None:
    response = await server.get("keys", headers={"Authorization": "Bearer wrong"})
    assert error_of(response) == (401, 10000)
    response = await server.get("keys", headers={"Authorization": ""})
    assert error_of(response) == (401, 10000)


async def test_value_read_is_raw_bytes_with_expiration_header(server: httpx.AsyncClient) -> None:
    at = int(time.time()) + 3600
    put = await server.put("values/k%2Fx", params={"expiration": at}, content=b"\x00\xffraw")
    assert put.status_code == 200
    assert put.json()["success"] is True
    got = await server.get("values/k%2Fx")
    assert got.status_code == 200
    assert got.content == b"\x00\xffraw"
    assert got.headers["expiration"] == str(at)
    assert "application/octet-stream" in got.headers["content-type"]


async def test_missing_key_is_404_code_10009(server: httpx.AsyncClient) -> None:
    assert error_of(await server.get("values/nope")) == (404, 10009)
    assert error_of(await server.get("metadata/nope")) == (404, 10009)
    deleted = await server.delete("values/nope")
    assert deleted.status_code == 200


async def test_multipart_write_with_metadata(server: httpx.AsyncClient) -> None:
    response = await server.put(
        "values/m",
        files={"value": ("value", b"\xfe\x00bin", "application/octet-stream")},
        data={"metadata": '{"type":"list","n":2}'},
    )
    assert response.status_code == 200
    assert (await server.get("values/m")).content == b"\xfe\x00bin"
    assert (await server.get("metadata/m")).json()["result"] == {"type": "list", "n": 2}


async def test_ttl_wins_when_both_expiry_params_are_given(server: httpx.AsyncClient) -> None:
    await server.put("values/ttl-only", params={"expiration_ttl": 600}, content=b"v")
    reference = int((await server.get("values/ttl-only")).headers["expiration"])
    far = reference + 100_000
    response = await server.put(
        "values/t", params={"expiration": far, "expiration_ttl": 600}, content=b"v"
    )
    assert response.status_code == 200
    expiration = int((await server.get("values/t")).headers["expiration"])
    assert abs(expiration - reference) <= 2


async def test_limits_answer_with_cloudflare_status_and_code(server: httpx.AsyncClient) -> None:
    assert error_of(await server.put("values/" + "k" * 513, content=b"v"))[0] == 414
    assert error_of(await server.put("values/k", params={"expiration_ttl": 59}, content=b"v")) == (
        400,
        10034,
    )
    past = int(time.time()) - 5
    assert error_of(await server.put("values/k", params={"expiration": past}, content=b"v")) == (
        400,
        10033,
    )
    assert error_of(await server.put("values/k", content=b"v" * (25 * 1024 * 1024 + 1)))[0] == 413
    meta = '{"p":"' + "x" * 1020 + '"}'
    response = await server.put(
        "values/k",
        files={"value": ("value", b"v", "application/octet-stream")},
        data={"metadata": meta},
    )
    assert error_of(response)[0] == 413
    assert (await server.get("keys")).json()["result"] == []


async def test_list_envelope_and_limit_errors(server: httpx.AsyncClient) -> None:
    await server.put("bulk", json=[{"key": f"k{i:02d}", "value": "v"} for i in range(12)])
    page = (await server.get("keys", params={"limit": 10})).json()
    assert page["success"] is True
    assert [k["name"] for k in page["result"]] == [f"k{i:02d}" for i in range(10)]
    assert page["result_info"]["count"] == 10
    assert page["result_info"]["cursor"]
    rest = (
        await server.get("keys", params={"limit": 10, "cursor": page["result_info"]["cursor"]})
    ).json()
    assert [k["name"] for k in rest["result"]] == ["k10", "k11"]
    assert rest["result_info"]["cursor"] == ""
    assert error_of(await server.get("keys", params={"limit": 1001}))[0] == 400
    assert error_of(await server.get("keys", params={"limit": 9}))[0] == 400


async def test_bulk_write_base64_and_its_limits(server: httpx.AsyncClient) -> None:
    response = await server.put("bulk", json=[{"key": "b", "value": "AP8=", "base64": True}])
    assert response.json()["result"] == {"successful_key_count": 1, "unsuccessful_keys": []}
    assert (await server.get("values/b")).content == b"\x00\xff"
    too_many = [{"key": f"k{i}", "value": "v"} for i in range(10_001)]
    assert error_of(await server.put("bulk", json=too_many))[0] == 413
    assert error_of(await server.post("bulk/get", json={"keys": [f"k{i}" for i in range(101)]}))[
        0
    ] in (400, 413)


async def test_bulk_get_shapes(server: httpx.AsyncClient) -> None:
    await server.put(
        "bulk",
        json=[{"key": "a", "value": "1", "metadata": {"m": 1}}, {"key": "j", "value": '{"x":1}'}],
    )
    plain = (await server.post("bulk/get", json={"keys": ["a", "zz"]})).json()["result"]
    assert plain == {"values": {"a": "1", "zz": None}}
    with_meta = (await server.post("bulk/get", json={"keys": ["a"], "withMetadata": True})).json()[
        "result"
    ]
    assert with_meta["values"]["a"]["value"] == "1"
    assert with_meta["values"]["a"]["metadata"] == {"m": 1}
    as_json = (await server.post("bulk/get", json={"keys": ["j"], "type": "json"})).json()["result"]
    assert as_json == {"values": {"j": {"x": 1}}}


async def test_bulk_delete_both_forms(server: httpx.AsyncClient) -> None:
    await server.put("bulk", json=[{"key": k, "value": "v"} for k in "abc"])
    assert (await server.post("bulk/delete", json=["a", "missing"])).json()["success"] is True
    assert (await server.request("DELETE", "bulk", json=["b"])).json()["success"] is True
    assert [k["name"] for k in (await server.get("keys")).json()["result"]] == ["c"]


async def test_unknown_route_and_wrong_method_are_envelopes(server: httpx.AsyncClient) -> None:
    assert error_of(await server.get("no-such-thing")) == (400, 7000)
    assert error_of(await server.post("keys")) == (405, 7001)
