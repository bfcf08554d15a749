"""A Redis hash has no field order: HGETALL answers in whatever order its encoding keeps
(insertion for a small hash, the hash table's buckets for a big one, which a restart or a
replica reseeds). Neither verify nor a second run may take a new order for a new value."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from brainbot.composition import open_namespace
from brainbot.kv.namespace import PutItem
from brainbot.migration.transform import digest, ordered_hash
from brainbot.storage import codec
from brainbot.storage.codec import Item
from tests.support.migration import migrate, settings_for, verify_kv


async def _reorder(source: aioredis.Redis, key: str, field: str) -> None:
    """The same hash with ``field`` moved to the end of HGETALL's order."""
    value = await source.hget(key, field)
    assert value is not None
    await source.hdel(key, field)
    await source.hset(key, field, value)


async def test_verify_does_not_call_a_reordered_hash_a_difference(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    await source.hset("profile:1", mapping={"a": "1", "b": "2", "c": "3"})
    await source.hset("profile:2", mapping={"z": "1", "y": "2"})
    assert (await migrate(redis_url, settings)).verify_differences == 0
    await _reorder(source, "profile:1", "a")
    await _reorder(source, "profile:2", "z")
    assert list(await source.hgetall("profile:1")) == [b"b", b"c", b"a"]
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert report.differences == []
    second = await migrate(redis_url, settings)
    assert second.entries.get("written", 0) == 0, second.entries
    assert second.verify_differences == 0


async def test_a_hash_whose_value_changed_is_still_a_difference(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    await source.hset("profile:1", mapping={"a": "1", "b": "2"})
    assert (await migrate(redis_url, settings)).verify_differences == 0
    await source.hset("profile:1", "a", "changed")
    await _reorder(source, "profile:1", "a")
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert {d.key: d.problem for d in report.differences} == {"profile:1": "value differs"}


async def test_a_hash_an_older_version_wrote_in_redis_order_still_matches(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Entries migrated before hashes were written in field order keep Redis's order and
    their digest of it: verify reads such a hash and compares fields, not bytes."""
    settings = settings_for(tmp_path)
    await source.hset("profile:1", mapping={"b": "2", "a": "1"})
    assert (await migrate(redis_url, settings)).verify_differences == 0
    async with open_namespace(settings, purpose="bulk") as kv:
        (entry,) = (await kv.get_many([f"{settings.kv_prefix}profile:1"])).values()
        assert entry is not None
        stamp = entry.metadata["_m"]
        old = b'{"b":"2","a":"1"}'
        metadata = {**entry.metadata, "_m": stamp[: -len(digest(old))] + digest(old)}
        await kv.put_many([PutItem(f"{settings.kv_prefix}profile:1", old, metadata=metadata)])
    report = await verify_kv(redis_url, settings, lanes=1, recheck_after=0)
    assert report.differences == []
    assert report.values_read >= 1


async def test_a_big_hash_read_in_slices_is_in_field_order_too(
    source: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Over 10,000 fields a hash is read with HSCAN, in its hash table's order."""
    settings = settings_for(tmp_path)
    fields = {f"f{i:05d}": str(i) for i in range(12_000)}
    await source.hset("big", mapping=fields)
    assert (await migrate(redis_url, settings)).verify_differences == 0
    async with open_namespace(settings, purpose="bulk") as kv:
        entry = await kv.get(f"{settings.kv_prefix}big")
    assert entry is not None
    assert list(orjson.loads(entry.value)) == sorted(fields)
    for field in ("f00000", "f05000", "f11999"):
        await _reorder(source, "big", field)
    assert (await verify_kv(redis_url, settings, lanes=1, recheck_after=0)).differences == []
    assert (await migrate(redis_url, settings)).entries.get("written", 0) == 0


_FIELDS = st.dictionaries(
    st.binary(max_size=6) | st.text(max_size=4).map(str.encode), st.binary(max_size=4), max_size=8
)


@given(_FIELDS)
def test_read_whole_or_in_slices_a_hash_is_stored_the_same(fields: dict[bytes, bytes]) -> None:
    """The two ways a hash reaches the plan (a dict from HGETALL, or the JSON streamed
    from HSCAN slices in any order) give the same bytes, text or base64."""
    whole, meta = codec.encode(Item("hash", dict(sorted(fields.items()))))
    shuffled = dict(reversed(list(fields.items())))
    streamed, _ = codec.encode(Item("hash", shuffled))
    assert ordered_hash(streamed, meta.get("e") == "b") == whole
