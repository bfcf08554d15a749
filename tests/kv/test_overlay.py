"""ReadYourWrites against a model: whatever this process writes and deletes, over a
namespace whose lists show only the past, its gets and (paged) lists show exactly its own
view, each name once, in UTF-8 order, no page over its limit."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from brainbot.kv import EmbeddedKV, ListLag, PutItem, ReadYourWrites
from brainbot.kv.namespace import KVNamespace

NAMES = ["a", "b", "c", "ab", "é", "z", "a/1", "a/2", "🙂", "ba"] + [f"n{i:02d}" for i in range(20)]
ops = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(NAMES), st.binary(max_size=4)),
    max_size=40,
)


async def listing(kv: KVNamespace, prefix: str, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await kv.list(prefix=prefix, limit=limit, cursor=cursor)
        pages.append([k.name for k in page.keys])
        if page.cursor is None:
            return pages
        cursor = page.cursor


@settings(max_examples=60, deadline=None)
@given(
    before=st.sets(st.sampled_from(NAMES)),
    writes=ops,
    limit=st.integers(10, 12),
    prefix=st.sampled_from(["", "a", "n0", "n1", "q"]),
)
def test_own_view_matches_a_model(
    before: set[str], writes: list[tuple[str, str, bytes]], limit: int, prefix: str
) -> None:
    async def check(directory: Path) -> None:
        inner = EmbeddedKV(directory / f"{uuid.uuid4().hex}.sqlite3", durable=False)
        await inner.put_many([PutItem(name, b"before") for name in before])  # already listed
        lagging = ListLag(inner, lag=3600)
        own = ReadYourWrites(lagging, 3600)
        model = {name: b"before" for name in before}
        for kind, name, value in writes:
            if kind == "put":
                await own.put(name, value)
                model[name] = value
            else:
                await own.delete(name)
                model.pop(name, None)
        pages = await listing(own, prefix, limit)
        assert all(len(page) <= limit for page in pages)
        expected = sorted((n for n in model if n.startswith(prefix)), key=str.encode)
        assert [name for page in pages for name in page] == expected
        got = await own.get_many(NAMES)
        assert {n: e.value for n, e in got.items() if e is not None} == model
        # the namespace underneath still lists only what was there before
        assert [n for p in await listing(lagging, "", 1000) for n in p] == sorted(
            before, key=str.encode
        )
        await own.aclose()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(check(Path(directory)))


async def test_memory_expires_with_its_window_and_respects_its_bounds(tmp_path: Path) -> None:
    now = [1_000.0]
    inner = EmbeddedKV(tmp_path / "kv.sqlite3")
    own = ReadYourWrites(inner, 60, max_keys=3, clock=lambda: now[0])
    for name in "abcde":
        await own.put(name, name.encode())
    assert len(own._journal) == 3  # the oldest two were dropped, not the data
    await inner.put("e", b"changed elsewhere")
    assert (await own.get("e")).value == b"e"  # type: ignore[union-attr]
    now[0] += 61
    assert (await own.get("e")).value == b"changed elsewhere"  # type: ignore[union-attr]
    await own.aclose()


async def test_a_failed_write_is_not_remembered(tmp_path: Path) -> None:
    import pytest

    from brainbot.kv import KeyTooLong

    own = ReadYourWrites(EmbeddedKV(tmp_path / "kv.sqlite3"), 60)
    with pytest.raises(KeyTooLong):
        await own.put("k" * 600, b"v")
    assert len(own._journal) == 0
    await own.aclose()
