"""Each command says once whether it reads or writes; DualStore and the Store protocol are
derived from that, so a command added to KVStore is routed and typed without a list to keep."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from brainbot.kv import EmbeddedKV
from brainbot.storage import DualStore, KVStore, RedisBackend, Store

SPECS = KVStore.command_specs()


def public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
    }


def test_every_public_command_of_kvstore_is_declared() -> None:
    assert len(SPECS) >= 57
    assert public_methods(KVStore) - {"aclose"} == set(SPECS)


def test_dual_store_routes_every_command() -> None:
    for name, spec in SPECS.items():
        assert name in vars(DualStore), f"DualStore does not route {name}"
        assert spec.kind in ("read", "write")


def test_the_store_protocol_lists_exactly_kvstores_commands() -> None:
    declared = {
        name
        for name, member in vars(Store).items()
        if callable(member) and not name.startswith("_")
    }
    assert declared - {"aclose"} == set(SPECS)


async def test_kv_dual_and_redis_all_satisfy_the_protocol(tmp_path: Path, redis_url: str) -> None:
    kv = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"))
    redis = RedisBackend(aioredis.Redis.from_url(redis_url))
    for store in (kv, DualStore(kv, redis), redis, aioredis.Redis.from_url(redis_url)):
        assert isinstance(store, Store)
    await kv.aclose()
    await redis.aclose()


def test_declared_keys_are_found_in_every_argument_shape() -> None:
    assert SPECS["mget"].keys_of({"keys": ["a", "b"], "args": ("c",)}) == ["a", "b", "c"]
    assert SPECS["mget"].keys_of({"keys": "a", "args": ()}) == ["a"]
    assert SPECS["mset"].keys_of({"mapping": {"a": 1, "b": 2}}) == ["a", "b"]
    assert SPECS["delete"].keys_of({"names": ("a", b"b")}) == ["a", b"b"]
    assert SPECS["rename"].keys_of({"src": "a", "dst": "b"}) == ["a", "b"]
    assert SPECS["keys"].keys_of({"pattern": "*"}) == []
    assert SPECS["hkeys"].unordered
    assert SPECS["ttl"].tolerance == 1


async def test_dual_mode_refuses_a_bad_key_as_kvstore_does(tmp_path: Path, redis_url: str) -> None:
    from brainbot.storage import DataError

    kv = KVStore(EmbeddedKV(tmp_path / "kv.sqlite3"))
    dual = DualStore(kv, RedisBackend(aioredis.Redis.from_url(redis_url)))
    for store in (kv, dual):
        with pytest.raises(DataError):
            await store.get(5)  # type: ignore[arg-type]
    await dual.aclose()


def test_the_command_table_in_the_docs_is_generated_from_the_code() -> None:
    from brainbot.storage.command_table import BEGIN, END, render

    docs = (Path(__file__).parents[2] / "docs" / "storage.md").read_text()
    start, end = docs.index(BEGIN), docs.index(END) + len(END)
    assert docs[start:end] == render(), "run: python -m brainbot.storage.command_table"
