"""``brainbot kv serve`` judged by Cloudflare's own clients: the official Python SDK
(``cloudflare``, pinned in the dev extra) and wrangler (pinned in workers/), plus what a
new user met before: newline keys unreachable, namespaces not served, unknown ids created
on first write, no identity endpoints, a token visible in ``ps`` or in a world-readable
file, one thread per namespace id."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudflare
import httpx
import pytest

from brainbot.kv import NamespaceNotFound
from tests.support.kv import rest_client
from tests.support.processes import ROOT, Service, start_kv_server, start_service

ACCOUNT = "5f3e1c0a9b8d7e6f5a4b3c2d1e0f9a8b"
WRANGLER = ROOT / "workers" / "node_modules" / ".bin" / "wrangler"


@pytest.fixture
def server(tmp_path: Path, api_token: str) -> Iterator[Service]:
    """A server as a user starts one: namespaces only once created, one account."""
    service = start_kv_server(
        tmp_path / "srv", api_token, "--namespace", "seeded", auto_create=False, account=ACCOUNT
    )
    yield service
    service.stop()


@pytest.fixture
def sdk(server: Service, api_token: str) -> Iterator[cloudflare.Cloudflare]:
    client = cloudflare.Cloudflare(api_token=api_token, base_url=server.url, max_retries=0)
    yield client
    client.close()


def test_ready_names_the_account(server: Service) -> None:
    assert any(line.endswith(f"account={ACCOUNT}") for line in server.log)


def test_the_sdk_manages_namespaces(sdk: cloudflare.Cloudflare) -> None:
    """Before: every namespace endpoint answered 400 / 7000 "No route for that URI"."""
    created = sdk.kv.namespaces.create(account_id=ACCOUNT, title="brainbot-prod")
    assert created is not None
    assert created.title == "brainbot-prod"
    titles = [n.title for n in sdk.kv.namespaces.list(account_id=ACCOUNT)]
    assert sorted(titles) == ["brainbot-prod", "seeded"]
    ordered = sdk.kv.namespaces.list(account_id=ACCOUNT, order="title", direction="desc")
    assert [n.title for n in ordered] == ["seeded", "brainbot-prod"]
    page = sdk.kv.namespaces.list(account_id=ACCOUNT, per_page=1, page=2, order="title")
    assert [n.title for n in page.result] == ["seeded"]
    with pytest.raises(cloudflare.BadRequestError) as duplicate:
        sdk.kv.namespaces.create(account_id=ACCOUNT, title="brainbot-prod")
    assert "10014" in str(duplicate.value)
    renamed = sdk.kv.namespaces.update(created.id, account_id=ACCOUNT, title="brainbot-staging")
    assert renamed.title == "brainbot-staging"
    fetched = sdk.kv.namespaces.get(created.id, account_id=ACCOUNT)
    assert fetched is not None
    assert fetched.title == "brainbot-staging"
    sdk.kv.namespaces.delete(created.id, account_id=ACCOUNT)
    with pytest.raises(cloudflare.NotFoundError) as gone:
        sdk.kv.namespaces.get(created.id, account_id=ACCOUNT)
    assert "10013" in str(gone.value)


@pytest.fixture(params=["kv-serve", "miniflare-rest-worker"])
def values_target(
    request: pytest.FixtureRequest, server: Service, api_token: str
) -> Iterator[tuple[cloudflare.Cloudflare, str, str]]:
    """The SDK against our server and against Cloudflare's simulator (the REST Worker in
    Miniflare), which must agree on every value path."""
    if request.param == "kv-serve":
        url, account, namespace = server.url, ACCOUNT, "seeded"
    else:
        sim: Service = request.getfixturevalue("miniflare")
        url, account, namespace = sim.url, "a", "miniflare"
    client = cloudflare.Cloudflare(api_token=api_token, base_url=url, max_retries=0)
    for key in client.kv.namespaces.keys.list(namespace, account_id=account):
        client.kv.namespaces.values.delete(key.name, account_id=account, namespace_id=namespace)
    yield client, account, namespace
    client.close()


def test_the_sdk_reads_and_writes_values(
    values_target: tuple[cloudflare.Cloudflare, str, str],
) -> None:
    sdk, account, namespace = values_target
    values = sdk.kv.namespaces.values
    ns = {"account_id": account, "namespace_id": namespace}
    # (the SDK refuses str values: bytes)
    values.update("greeting", **ns, value=b"hello", metadata={"lang": "en"}, expiration_ttl=3600)
    assert values.get("greeting", **ns).read() == b"hello"
    assert sdk.kv.namespaces.metadata.get("greeting", **ns) == {"lang": "en"}
    keys = list(sdk.kv.namespaces.keys.list(namespace, account_id=account, prefix="gre"))
    assert [k.name for k in keys] == ["greeting"]
    assert keys[0].expiration is not None
    assert keys[0].metadata == {"lang": "en"}
    sdk.kv.namespaces.bulk_update(
        namespace,
        account_id=account,
        body=[{"key": f"bulk:{i}", "value": f"v{i}"} for i in range(5)],
    )
    got = sdk.kv.namespaces.bulk_get(namespace, account_id=account, keys=["bulk:0", "bulk:4"])
    assert got is not None
    assert got.values == {"bulk:0": "v0", "bulk:4": "v4"}  # type: ignore[union-attr]
    sdk.kv.namespaces.bulk_delete(namespace, account_id=account, body=["bulk:0", "bulk:1"])
    left = [
        k.name for k in sdk.kv.namespaces.keys.list(namespace, account_id=account, prefix="bulk:")
    ]
    assert left == ["bulk:2", "bulk:3", "bulk:4"]
    values.delete("greeting", **ns)
    with pytest.raises(cloudflare.NotFoundError):
        values.get("greeting", **ns)


def test_an_unknown_namespace_is_not_created_and_answers_10013(
    sdk: cloudflare.Cloudflare, server: Service, api_token: str
) -> None:
    """Before: a typo in the namespace id silently wrote to a new local namespace."""
    with pytest.raises(cloudflare.NotFoundError) as caught:
        sdk.kv.namespaces.values.update("k", account_id=ACCOUNT, namespace_id="typo", value=b"lost")
    assert "10013" in str(caught.value)
    names = [n.id for n in sdk.kv.namespaces.list(account_id=ACCOUNT)]
    assert "typo" not in names

    async def ours() -> None:
        async with rest_client(server.url, api_token, "typo", account_id=ACCOUNT) as kv:
            with pytest.raises(NamespaceNotFound):
                await kv.put("k", b"v")

    import asyncio

    asyncio.run(ours())


def test_another_account_is_refused_as_cloudflare_does(
    sdk: cloudflare.Cloudflare,
) -> None:
    with pytest.raises(cloudflare.PermissionDeniedError) as caught:
        sdk.kv.namespaces.list(account_id="0" * 32)
    assert "10000" in str(caught.value)


def test_every_key_kv_accepts_is_reachable(server: Service, api_token: str) -> None:
    """Before: PUT /bulk took "x\\ny", but GET/DELETE values/ and GET metadata/ answered
    400 / 7000 "No route for that URI" (the route did not match a newline)."""
    import asyncio

    awkward = ["x\ny", "tab\there", "line\r\nend", "slash/and?query#frag", "%41", "ünï 🙂", "\n"]

    async def check() -> None:
        async with rest_client(server.url, api_token, "seeded", account_id=ACCOUNT) as kv:
            for key in awkward:
                await kv.put(key, key.encode(), metadata={"k": key})
                entry = await kv.get(key)
                assert entry is not None
                assert entry.value == key.encode()
                assert entry.metadata == {"k": key}
            for key in awkward:
                await kv.delete(key)
                assert await kv.get(key) is None

    asyncio.run(check())


def test_identity_endpoints_answer_as_cloudflare(server: Service, api_token: str) -> None:
    auth = {"Authorization": f"Bearer {api_token}"}
    with httpx.Client(base_url=server.url, headers=auth) as http:
        verify = http.get("/user/tokens/verify").json()
        assert verify["success"]
        assert verify["result"]["status"] == "active"
        memberships = http.get("/memberships").json()["result"]
        assert memberships[0]["account"]["id"] == ACCOUNT
        assert http.get("/accounts").json()["result"][0]["id"] == ACCOUNT
        user = http.get("/user")
        assert user.status_code == 403
        assert user.json()["errors"][0]["code"] == 9109
        bad = http.get("/user/tokens/verify", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


# -- wrangler ---------------------------------------------------------------------------------


def wrangler(
    server: Service, token: str, tmp: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None or not WRANGLER.exists():
        pytest.skip("Node.js or wrangler is not installed: run ./scripts/setup")
    env = {
        **os.environ,
        "CLOUDFLARE_API_TOKEN": token,
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "CLOUDFLARE_API_BASE_URL": server.url,
        "WRANGLER_SEND_METRICS": "false",
        "CI": "1",
        "XDG_CONFIG_HOME": str(tmp / "wrangler-config"),
    }
    return subprocess.run(
        [str(WRANGLER), *args], env=env, cwd=tmp, capture_output=True, text=True, timeout=120
    )


def test_wrangler_drives_the_server(server: Service, api_token: str, tmp_path: Path) -> None:
    """Before: `wrangler kv namespace list` exited 1 and `whoami` printed "No route"."""
    who = wrangler(server, api_token, tmp_path, "whoami")
    assert who.returncode == 0, who.stderr
    assert ACCOUNT in who.stdout
    listed = wrangler(server, api_token, tmp_path, "kv", "namespace", "list")
    assert listed.returncode == 0, listed.stderr
    assert "seeded" in [n["title"] for n in json.loads(listed.stdout[listed.stdout.index("[") :])]
    put = wrangler(
        server, api_token, tmp_path, "kv", "key", "put", "w:key", "from wrangler",
        "--namespace-id", "seeded", "--remote", "--metadata", '{"by":"wrangler"}',
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    got = wrangler(
        server, api_token, tmp_path, "kv", "key", "get", "w:key", "--namespace-id", "seeded",
        "--remote", "--text",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert "from wrangler" in got.stdout
    keys = wrangler(
        server, api_token, tmp_path, "kv", "key", "list", "--namespace-id", "seeded", "--remote"
    )
    assert keys.returncode == 0, keys.stderr
    assert {"name": "w:key", "metadata": {"by": "wrangler"}}.items() <= json.loads(
        keys.stdout[keys.stdout.index("[") :]
    )[0].items()
    deleted = wrangler(
        server, api_token, tmp_path, "kv", "key", "delete", "w:key", "--namespace-id", "seeded",
        "--remote",
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    wrong = wrangler(server, "not-the-token", tmp_path, "kv", "namespace", "list")
    assert wrong.returncode != 0
    assert "No route for that URI" not in wrong.stdout + wrong.stderr


# -- hardening -----------------------------------------------------------------------------


def serve(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`brainbot kv serve` that must refuse to start (so it exits at once)."""
    environment = {k: v for k, v in os.environ.items() if k != "BRAINBOT_KV_SERVE_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "brainbot", "kv", "serve", "--port", "0", "--data", str(tmp), *args],
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_token_file_is_never_followed_nor_left_readable(tmp_path: Path) -> None:
    """Before: a symlink at DATA/serve-token was followed (its target overwritten), and a
    world-readable file stayed so while the server printed "(mode 0600)"."""
    data = tmp_path / "data"
    data.mkdir()
    target = tmp_path / "precious"
    target.write_text("do not overwrite")
    (data / "serve-token").symlink_to(target)
    refused = serve(data)
    assert refused.returncode == 2
    assert "symlink" in refused.stderr
    assert target.read_text() == "do not overwrite"
    (data / "serve-token").unlink()
    (data / "serve-token").write_text("wide-open-token\n")
    (data / "serve-token").chmod(0o644)
    refused = serve(data)
    assert refused.returncode == 2
    assert "chmod 600" in refused.stderr
    assert "wide-open-token" not in refused.stderr + refused.stdout


def test_the_token_from_the_environment_or_a_file_and_argv_warns(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-" + secrets.token_hex(8) + "\n")
    token_file.chmod(0o600)
    both = serve(
        tmp_path / "d1", "--token-file", str(token_file), env={"BRAINBOT_KV_SERVE_TOKEN": "x"}
    )
    assert both.returncode == 2
    assert "one way" in both.stderr
    service = start_service(
        [sys.executable, "-m", "brainbot", "kv", "serve", "--port", "0", "--data",
         str(tmp_path / "d2"), "--token-file", str(token_file), "--namespace", "n"],
        r"^READY (\S+) account=",
        env={"BRAINBOT_KV_SERVE_TOKEN": ""},
    )  # fmt: skip
    try:
        token = token_file.read_text().strip()
        ok = httpx.get(
            service.url + "/user/tokens/verify", headers={"Authorization": f"Bearer {token}"}
        )
        assert ok.status_code == 200
    finally:
        service.stop()
    service = start_service(
        [sys.executable, "-m", "brainbot", "kv", "serve", "--port", "0", "--data",
         str(tmp_path / "d3"), "--token", "argv-token"],
        r"^READY (\S+) account=",
        env={"BRAINBOT_KV_SERVE_TOKEN": ""},
    )  # fmt: skip
    try:
        assert any("visible to every local user" in line for line in service.log)
    finally:
        service.stop()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_many_namespaces_do_not_cost_a_thread_each(tmp_path: Path, api_token: str) -> None:
    """Before: 300 new namespace ids took the process to 303 threads and 915 descriptors."""
    import asyncio

    service = start_kv_server(tmp_path / "srv", api_token, "--max-open", "8")
    try:

        async def touch() -> None:
            for i in range(100):
                async with rest_client(service.url, api_token, f"ns{i}") as kv:
                    await kv.put("k", b"v")

        asyncio.run(touch())
        status = Path(f"/proc/{service.process.pid}/status").read_text()
        threads = int(status.split("Threads:")[1].split()[0])
        assert threads < 40
        descriptors = len(os.listdir(f"/proc/{service.process.pid}/fd"))
        assert descriptors < 80
    finally:
        service.stop()
