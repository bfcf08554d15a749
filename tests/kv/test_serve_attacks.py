"""`brainbot kv serve` against a hostile client, over real HTTP: malformed input is a 4xx
in Cloudflare's envelope (never a 500), changes nothing, and costs the server nothing it
keeps. Each test is an attack that once broke the server; the measurement is in its
docstring."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.attacks import closed_by_server, slow_header_connections
from tests.support.processes import TEST_ACCOUNT, Service, start_kv_server

DEEP = 100_000
"""Nesting past Python's recursion limit: ``json.loads`` raised RecursionError (a 500)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, api_token: str) -> Iterator[Service]:
    service = start_kv_server(tmp_path_factory.mktemp("kv-serve-attacks"), api_token)
    yield service
    service.stop()


@pytest.fixture
def api(server: Service, api_token: str) -> Iterator[httpx.Client]:
    """A client at this account's KV storage."""
    with httpx.Client(
        base_url=f"{server.url}/accounts/{TEST_ACCOUNT}/storage/kv/",
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=30,
    ) as http:
        yield http


@pytest.fixture
def namespace(api: httpx.Client) -> str:
    response = api.post("namespaces", json={"title": f"attacks-{uuid.uuid4().hex}"})
    assert response.status_code == 200
    namespace_id: str = response.json()["result"]["id"]
    return namespace_id


def error_of(response: httpx.Response) -> tuple[int, int]:
    body = response.json()
    assert body["success"] is False
    return response.status_code, body["errors"][0]["code"]


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request as bytes on its own connection (paths httpx would normalise)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def head(method: str, path: str, token: str, length: int, *extra: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: x",
        f"Authorization: Bearer {token}",
        f"Content-Length: {length}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- query strings ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["²", "9" * 5000])
def test_a_page_number_python_cannot_read_is_400(api: httpx.Client, page: str) -> None:
    """Before: ``page=²`` (isdigit() but not int()) and a 5,000-digit page answered 500."""
    response = api.get("namespaces", params={"page": page})
    assert error_of(response) == (400, 10001)
    response = api.get("namespaces", params={"per_page": page})
    assert error_of(response) == (400, 10001)


# -- namespace titles ------------------------------------------------------------------------


def test_a_title_with_a_lone_surrogate_is_refused_and_creates_nothing(
    api: httpx.Client, namespace: str
) -> None:
    """Before: ``{"title": "\\ud800"}`` answered 500 (UnicodeEncodeError), create and rename."""
    before = api.get("namespaces", params={"per_page": 1000}).json()["result"]
    body = b'{"title": "\\ud800"}'
    assert error_of(api.post("namespaces", content=body)) == (400, 10019)
    assert error_of(api.put(f"namespaces/{namespace}", content=body)) == (400, 10019)
    assert api.get("namespaces", params={"per_page": 1000}).json()["result"] == before


def test_a_title_body_over_its_limit_is_413_not_invalid_json(api: httpx.Client) -> None:
    """Before: a 70 KB title body answered 400 'not valid JSON': the size error is a
    ValueError, and the JSON reader swallowed it."""
    response = api.post("namespaces", json={"title": "x" * 70_000})
    assert error_of(response) == (413, 10045)


def test_a_bulk_body_declared_over_100_mb_is_413(server: Service, api_token: str) -> None:
    """Before: 400 / 10001 'not valid JSON', refused unread but with the wrong answer."""
    path = urlsplit(server.url).path + f"/accounts/{TEST_ACCOUNT}/storage/kv/namespaces/x/bulk"
    status, body = raw_request(server.url, head("PUT", path, api_token, 100_000_001))
    assert status == 413
    assert json.loads(body)["errors"][0]["code"] == 10045


# -- nested JSON -----------------------------------------------------------------------------


def test_deeply_nested_json_bodies_are_400(api: httpx.Client, namespace: str) -> None:
    """Before: every JSON body endpoint answered 500 (RecursionError) to ``[[[...]]]``."""
    deep = b"[" * DEEP + b"]" * DEEP
    assert error_of(api.put(f"namespaces/{namespace}/bulk", content=deep))[0] == 400
    assert error_of(api.post(f"namespaces/{namespace}/bulk/delete", content=deep))[0] == 400
    assert (
        error_of(api.post(f"namespaces/{namespace}/bulk/get", content=b'{"keys":' + deep + b"}"))[0]
        == 400
    )
    title = b'{"title":' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # within the 64 KB limit
    assert error_of(api.post("namespaces", content=title)) == (400, 10001)


def test_deeply_nested_multipart_metadata_is_400_and_writes_nothing(
    api: httpx.Client, namespace: str
) -> None:
    """Before: 500 (RecursionError) for metadata of 50,000 nested arrays."""
    deep = b"[" * 50_000 + b"]" * 50_000
    files = {"value": (None, b"v"), "metadata": (None, deep)}
    response = api.put(f"namespaces/{namespace}/values/k", files=files)
    assert error_of(response) == (400, 10047)
    assert error_of(api.get(f"namespaces/{namespace}/values/k")) == (404, 10009)


def test_bulk_get_as_json_of_a_deeply_nested_value_is_400(
    api: httpx.Client, namespace: str
) -> None:
    """Before: a stored value of 100,000 nested arrays read with type 'json' answered 500."""
    deep = b"[" * DEEP + b"]" * DEEP
    assert api.put(f"namespaces/{namespace}/values/deep", content=deep).status_code == 200
    response = api.post(f"namespaces/{namespace}/bulk/get", json={"keys": ["deep"], "type": "json"})
    assert error_of(response) == (400, 10001)


def test_a_multipart_value_of_newlines_does_not_stall_other_requests(
    api: httpx.Client, namespace: str
) -> None:
    """Before: the MIME parser ran on the event loop, line by line: a 20 MB value of
    newlines took 8 s, and a list request sent meanwhile waited 7.6 s (10 MB: ~4 s)."""
    value = b"\n" * 10_000_000
    body = (
        b'--BB\r\nContent-Disposition: form-data; name="value"\r\n\r\n' + value + b"\r\n--BB--\r\n"
    )
    answers: list[int] = []

    def upload() -> None:
        headers = {"Content-Type": "multipart/form-data; boundary=BB"}
        response = api.put(f"namespaces/{namespace}/values/lines", content=body, headers=headers)
        answers.append(response.status_code)

    uploading = threading.Thread(target=upload)
    uploading.start()
    time.sleep(0.5)  # the body is sent and being parsed
    started = time.monotonic()
    assert api.get(f"namespaces/{namespace}/keys").status_code == 200
    waited = time.monotonic() - started
    uploading.join()
    assert answers == [200]
    assert waited < 1.5


# -- paths -----------------------------------------------------------------------------------


def test_an_encoded_slash_in_the_namespace_id_moves_no_request(
    server: Service, api: httpx.Client, api_token: str, namespace: str
) -> None:
    """Before: ``PUT .../namespaces/<ns>%2Fvalues%2Fk/values/z`` was routed on the decoded
    path (namespace <ns>) and keyed on the raw one: it wrote key ``z`` into <ns>, 200.
    And ``DELETE .../namespaces/<ns>%2Fbulk`` ran <ns>'s bulk delete."""
    base = urlsplit(server.url).path + f"/accounts/{TEST_ACCOUNT}/storage/kv/namespaces/"
    path = f"{base}{namespace}%2Fvalues%2Fk/values/z"
    status, body = raw_request(server.url, head("PUT", path, api_token, 4), b"evil")
    assert status == 404, body
    assert json.loads(body)["errors"][0]["code"] == 10013
    assert error_of(api.get(f"namespaces/{namespace}/values/z")) == (404, 10009)
    assert error_of(api.get(f"namespaces/{namespace}/values/k%2Fvalues%2Fz")) == (404, 10009)

    assert api.put(f"namespaces/{namespace}/values/kept", content=b"v").status_code == 200
    keys = b'["kept"]'
    path = f"{base}{namespace}%2Fbulk"
    status, body = raw_request(server.url, head("DELETE", path, api_token, len(keys)), keys)
    assert status == 404, body
    assert json.loads(body)["errors"][0]["code"] == 10013
    assert api.get(f"namespaces/{namespace}/values/kept").content == b"v"


def test_unauthenticated_requests_leave_no_state_behind(server: Service, api_token: str) -> None:
    """Before: every request, even without a token, added its path (account id included)
    to the per-route counts for good: 300 requests with 8 KB account ids added 300 entries
    and 2.4 MB to /__brainbot/stats; memory grew without bound."""
    root = server.url.split("/client/v4")[0]
    auth = {"Authorization": f"Bearer {api_token}"}

    def routes() -> int:
        stats = httpx.get(root + "/__brainbot/stats", headers=auth).json()["result"]
        return len(stats["by_route"])

    before = routes()
    with httpx.Client(timeout=30) as http:
        for n in range(100):
            account = f"{'a' * 4000}{n}"
            http.get(f"{server.url}/accounts/{account}/storage/kv/namespaces")
    assert routes() <= before + 1


# -- races -----------------------------------------------------------------------------------


def test_a_write_to_a_namespace_deleted_meanwhile_is_404(
    server: Service, api: httpx.Client, api_token: str, namespace: str
) -> None:
    """Before: a PUT whose body arrived after its namespace was deleted answered 500
    ('This EmbeddedKV is closed.'), and a rename in the same race 500 (KeyError)."""
    base = urlsplit(server.url).path + f"/accounts/{TEST_ACCOUNT}/storage/kv/namespaces/"
    parts = urlsplit(server.url)
    title = json.dumps({"title": f"renamed-{uuid.uuid4().hex}"}).encode()
    for path, body in ((f"{base}{namespace}/values/k", b"vv"), (f"{base}{namespace}", title)):
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            method = "PUT"
            sock.sendall(head(method, path, api_token, len(body)) + body[:1])
            time.sleep(0.3)  # the request is waiting for the rest of its body
            assert api.delete(f"namespaces/{namespace}").status_code == 200
            sock.sendall(body[1:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 404"), answer
        assert b'"code":10013' in answer
        created = api.post("namespaces", json={"title": f"again-{uuid.uuid4().hex}"})
        namespace = created.json()["result"]["id"]  # the next round's victim


# -- the test clock --------------------------------------------------------------------------


@pytest.fixture
def clock_server(tmp_path: Path, api_token: str) -> Iterator[Service]:
    service = start_kv_server(tmp_path / "kv", api_token, "--test-clock")
    yield service
    service.stop()


@pytest.mark.parametrize(
    "body",
    [b"[1]", b"{", b'{"advance": "nan"}', b'{"advance": NaN}', b'{"advance": "1e999"}', b"7"],
)
def test_the_test_clock_refuses_what_is_not_seconds_and_keeps_time(
    clock_server: Service, api_token: str, body: bytes
) -> None:
    """Before: a body that was not an object answered a plain-text 500; ``"nan"`` set the
    clock to NaN (answering 500), after which every read answered 500 until a restart."""
    root = clock_server.url.split("/client/v4")[0]
    auth = {"Authorization": f"Bearer {api_token}"}
    response = httpx.post(root + "/__brainbot/clock", content=body, headers=auth)
    assert error_of(response) == (400, 10001)
    ns = f"{clock_server.url}/accounts/{TEST_ACCOUNT}/storage/kv/namespaces/{uuid.uuid4().hex}"
    assert error_of(httpx.get(ns + "/values/k", headers=auth)) == (404, 10009)
    moved = httpx.post(root + "/__brainbot/clock", json={"advance": 0}, headers=auth)
    assert abs(moved.json()["result"]["now"] - time.time()) < 60


def test_slow_headers_are_cut_off_and_real_clients_still_served(
    tmp_path: Path, api_token: str
) -> None:
    """Measured: 50 connections sending headers that never end were all still open after
    45 s (uvicorn has no header deadline; kv serve did not use ``brainbot serve``'s
    transport), so enough of them exhaust the server's descriptors. Cut off now."""
    service = start_kv_server(tmp_path, api_token, "--header-timeout", "2")
    try:
        attackers = slow_header_connections(service.url, 100)
        with httpx.Client(headers={"Authorization": f"Bearer {api_token}"}) as http:
            answer = http.get(f"{service.url}/accounts/{TEST_ACCOUNT}/storage/kv/namespaces")
        assert answer.status_code == 200  # served during the attack
        assert all(closed_by_server(s, 6) for s in attackers)  # cut off, not held for ever
        for s in attackers:
            s.close()
    finally:
        service.stop()
