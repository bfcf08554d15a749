"""The KV rules the two Workers share (workers/shared/kv-rules.mjs).

* The gateway still deploys as one script: wrangler (the pinned one, in workers/) bundles
  ``main`` from wrangler.toml with the rules module inlined.
* Both Workers answer the same invalid input the same: each case goes to the REST Worker
  as a REST call and to the gateway as a one-op signed batch, and the (status, code,
  message) triples must be equal (and the status and code the ones Cloudflare gives).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from brainbot.kv.gateway import signed_headers
from tests.support.processes import ROOT, Service

WORKERS = ROOT / "workers"
GATEWAY_DIR = WORKERS / "kv-gateway"
RULES = WORKERS / "shared" / "kv-rules.mjs"
WRANGLER = WORKERS / "node_modules" / ".bin" / "wrangler"

# `from "./x"`, `import "../x"`, `import("./x")`: what an un-inlined relative import looks like.
RELATIVE_IMPORT = re.compile(r"""(?:\bfrom|\bimport)\s*\(?\s*["']\.{1,2}/""")


def test_the_gateway_bundles_into_one_script_with_the_rules_inlined(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: run ./scripts/setup")
    if not WRANGLER.exists():
        pytest.fail("wrangler is not installed: run ./scripts/setup (npm ci in workers/)")
    main = tomllib.loads((GATEWAY_DIR / "wrangler.toml").read_text())["main"]
    out = tmp_path / "out"
    # --dry-run bundles and stops before any upload: no account, no network.
    result = subprocess.run(
        [str(WRANGLER), "deploy", "--dry-run", "--outdir", str(out)],
        cwd=GATEWAY_DIR,
        env={
            **os.environ,
            "CI": "1",
            "WRANGLER_SEND_METRICS": "false",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),  # wrangler's logs stay here
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    scripts = sorted(p.name for p in out.iterdir() if p.suffix in {".js", ".mjs", ".cjs"})
    assert scripts == [Path(main).stem + ".js"]
    bundle = (out / scripts[0]).read_text()
    assert not RELATIVE_IMPORT.search(bundle)
    assert "async function lookupExpiration(" in bundle  # from the rules module
    # What went into it: wrangler.toml's main and the rules module, nothing else.
    sources = json.loads((out / f"{scripts[0]}.map").read_text())["sources"]
    assert {(out / source).resolve() for source in sources} == {
        (GATEWAY_DIR / main).resolve(),
        (GATEWAY_DIR / "src" / "coordinator.mjs").resolve(),  # the Durable Objects
        (GATEWAY_DIR / "src" / "replay.mjs").resolve(),
        RULES.resolve(),
    }
    assert re.search(r"export \{[^}]*Coordinator,\s*ReplayGuard,", bundle)  # the DO classes


# --- the same invalid input to both Workers ------------------------------------------

AHEAD_30 = "now + 30 s"  # replaced by an expiration 30 s ahead of both Workers' clocks
TOO_LARGE = 25 * 1024 * 1024 + 1


@dataclass(frozen=True)
class Case:
    op: dict[str, Any]
    """The gateway op; the REST call is derived from it."""
    status: int
    code: int


CASES = {
    "key-dot": Case({"op": "put", "key": ".", "value": "v"}, 400, 10042),
    "key-dotdot": Case({"op": "put", "key": "..", "value": "v"}, 400, 10042),
    "key-empty": Case({"op": "put", "key": "", "value": "v"}, 400, 10042),
    "key-513-bytes": Case({"op": "put", "key": "é" * 256 + "k", "value": "v"}, 414, 10042),
    "ttl-30": Case({"op": "put", "key": "k", "value": "v", "expiration_ttl": 30}, 400, 10034),
    "ttl-0": Case({"op": "put", "key": "k", "value": "v", "expiration_ttl": 0}, 400, 10034),
    "expiration-past": Case(
        {"op": "put", "key": "k", "value": "v", "expiration": 1_000_000_000}, 400, 10033
    ),
    "expiration-30s-ahead": Case(
        {"op": "put", "key": "k", "value": "v", "expiration": AHEAD_30}, 400, 10033
    ),
    # {"m":"xxx..."}: 8 bytes of JSON around the text.
    "metadata-1025-bytes": Case(
        {"op": "put", "key": "k", "value": "v", "metadata": {"m": "x" * 1017}}, 413, 10047
    ),
    "value-over-25-mib": Case({"op": "put", "key": "k", "value": TOO_LARGE}, 413, 10001),
    "list-limit-5": Case({"op": "list", "limit": 5}, 400, 10026),
    "list-limit-1001": Case({"op": "list", "limit": 1001}, 400, 10026),
    "list-prefix-513-bytes": Case({"op": "list", "prefix": "p" * 513}, 414, 10042),
    "list-cursor-garbage": Case({"op": "list", "cursor": "garbage!"}, 400, 10041),
    "list-cursor-not-ascii": Case({"op": "list", "cursor": "curs\u00f6r"}, 400, 10041),
}

Answer = tuple[int, int, str]


def _signed(secret: str, url: str, body: bytes) -> dict[str, str]:
    """The gateway's signature, exactly as brainbot.kv.gateway signs."""
    return {**signed_headers(secret, "POST", url, body), "Content-Type": "application/json"}


def _pick(op: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: op[name] for name in names if name in op}


def _value_bytes(value: str | int) -> bytes:
    """A case's value: text, or the size of a value of zero bytes (too large to spell out)."""
    return b"\0" * value if isinstance(value, int) else value.encode()


class Workers:
    def __init__(self, rest: Service, token: str, gateway: Service, secret: str) -> None:
        self.http = httpx.Client(timeout=120)
        self.rest_url, self.token = rest.url, token
        self.gateway_url, self.secret = gateway.url, secret
        self.namespace = f"{rest.url}/accounts/a/storage/kv/namespaces/miniflare"

    # clocks ------------------------------------------------------------------------

    def rest_clock(self, advance: float = 0) -> int:
        root = self.rest_url.removesuffix("/client/v4")
        response = self.http.post(
            f"{root}/__sim/clock",
            json={"advance": advance},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        return int(response.json()["result"]["now"])

    def gateway_clock(self, advance: float = 0) -> int:
        body = json.dumps({"advance": advance}).encode()
        url = f"{self.gateway_url}/__sim/clock"
        response = self.http.post(url, content=body, headers=_signed(self.secret, url, body))
        response.raise_for_status()
        return int(response.json()["now"])

    def now(self) -> int:
        """Both Workers' simulated time, within 20 s of each other (the later of the two).

        The session's Workers may have been moved forward by other tests (their test
        clocks only go forward); only if they are far apart is the one behind caught up."""
        rest, gateway = self.rest_clock(), self.gateway_clock()
        if rest - gateway > 20:
            gateway = self.gateway_clock(rest - gateway)
        elif gateway - rest > 20:
            rest = self.rest_clock(gateway - rest)
        return max(rest, gateway)

    # one op each way ---------------------------------------------------------------

    def gateway_answer(self, op: dict[str, Any]) -> Answer:
        if op["op"] == "put":
            op = {**op, "value": base64.b64encode(_value_bytes(op["value"])).decode()}
        body = json.dumps({"ops": [op]}, separators=(",", ":")).encode()
        response = self.http.post(
            f"{self.gateway_url}/v1/batch",
            content=body,
            headers=_signed(self.secret, f"{self.gateway_url}/v1/batch", body),
        )
        assert response.status_code == 200, response.text
        [result] = response.json()["results"]
        assert result["ok"] is False, result
        return result["status"], result["code"], result["message"]

    def rest_answer(self, op: dict[str, Any]) -> Answer:
        auth = {"Authorization": f"Bearer {self.token}"}
        if op["op"] == "list":
            params = _pick(op, "limit", "prefix", "cursor")
            response = self.http.get(f"{self.namespace}/keys", params=params, headers=auth)
        elif op["key"] in ("", ".", ".."):
            # Not possible as a path segment (URLs resolve "." and ".."): a bulk write of
            # one pair, which runs the same key check.
            pair = _pick(op, "key", "value", "expiration", "expiration_ttl")
            response = self.http.put(f"{self.namespace}/bulk", json=[pair], headers=auth)
        else:
            url = f"{self.namespace}/values/{quote(op['key'], safe='')}"
            params = _pick(op, "expiration", "expiration_ttl")
            raw = _value_bytes(op["value"])
            if "metadata" in op:
                files: dict[str, tuple[str | None, bytes | str]] = {
                    "value": ("value", raw),
                    "metadata": (None, json.dumps(op["metadata"])),
                }
                response = self.http.put(url, params=params, files=files, headers=auth)
            else:
                headers = {**auth, "Content-Type": "application/octet-stream"}
                response = self.http.put(url, params=params, content=raw, headers=headers)
        envelope = response.json()
        assert envelope["success"] is False, envelope
        [error] = envelope["errors"]
        return response.status_code, error["code"], error["message"]


@pytest.fixture(scope="module")
def workers(
    miniflare: Service, api_token: str, gateway: Service, gateway_secret: str
) -> Iterator[Workers]:
    both = Workers(miniflare, api_token, gateway, gateway_secret)
    with both.http:
        yield both


@pytest.mark.parametrize("name", CASES)
def test_both_workers_refuse_an_invalid_input_alike(workers: Workers, name: str) -> None:
    case = CASES[name]
    op = dict(case.op)
    if op.get("expiration") == AHEAD_30:
        op["expiration"] = workers.now() + 30
    rest, gateway = workers.rest_answer(op), workers.gateway_answer(op)
    assert rest == gateway
    assert rest[:2] == (case.status, case.code), rest
