"""Stores under test: KVStore on the embedded KV and, through the REST client, on
`brainbot kv serve`; redis-py on a real redis-server as the reference."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from brainbot.kv import EmbeddedKV
from brainbot.storage import KVStore
from tests.support.kv import rest_client
from tests.support.processes import Service


@pytest.fixture(params=["embedded", "rest-local"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path, api_token: str):  # type: ignore[no-untyped-def]
    """Makes fresh, empty KVStores (each on its own namespace) for the chosen backend.
    Callers close them (``async with``), in the event loop that used them."""

    def make(**options: object) -> KVStore:
        options.setdefault("write_interval", 0.0)
        if request.param == "embedded":
            namespace = EmbeddedKV(tmp_path / f"{uuid.uuid4().hex}.sqlite3")
        else:
            server: Service = request.getfixturevalue("kv_server_realtime")
            namespace = rest_client(server.url, api_token, uuid.uuid4().hex)
        return KVStore(namespace, **options)  # type: ignore[arg-type]

    make.backend = request.param  # type: ignore[attr-defined]
    return make
