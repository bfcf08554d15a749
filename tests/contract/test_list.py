"""list: UTF-8 byte order, prefixes, opaque cursors across pages, the page-size limit."""

from __future__ import annotations

import pytest

from brainbot.kv import InvalidCursor, InvalidListLimit, PutItem, iter_keys
from tests.contract.conftest import Target

# U+FB01 sorts before U+1F642 in UTF-8 (and code points) but after it in UTF-16,
# which is how JavaScript compares strings: a simulator sorting JS strings would fail here.
ORDER_PROBES = ["B", "a", "a/b", "a0", "ab", "é", "\ufb01", "🙂", "z", "~", "\x7f"]


async def test_list_is_in_utf8_byte_order(target: Target) -> None:
    await target.kv.put_many([PutItem(k, b"v") for k in ORDER_PROBES])
    listed = [k.name async for k in iter_keys(target.kv, page_size=10)]
    assert listed == sorted(ORDER_PROBES, key=lambda k: k.encode("utf-8"))


async def test_pages_follow_cursors_and_the_last_page_has_none(target: Target) -> None:
    keys = [f"key-{i:03d}" for i in range(25)]
    await target.kv.put_many([PutItem(k, b"v") for k in keys])
    pages = []
    cursor = None
    while True:
        page = await target.kv.list(limit=10, cursor=cursor)
        pages.append([k.name for k in page.keys])
        if page.cursor is None:
            break
        assert page.cursor  # opaque, non-empty
        cursor = page.cursor
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [k for p in pages for k in p] == keys


async def test_prefix_selects_and_paginates(target: Target) -> None:
    await target.kv.put_many(
        [PutItem(f"user:{i:02d}", b"v") for i in range(15)]
        + [PutItem("user", b"v"), PutItem("user;", b"v"), PutItem("usex", b"v"), PutItem("a", b"v")]
    )
    listed = [k.name async for k in iter_keys(target.kv, prefix="user:", page_size=10)]
    assert listed == [f"user:{i:02d}" for i in range(15)]
    assert [k.name async for k in iter_keys(target.kv, prefix="use")] == (
        ["user"] + [f"user:{i:02d}" for i in range(15)] + ["user;", "usex"]
    )
    assert [k.name async for k in iter_keys(target.kv, prefix="nothing")] == []


async def test_prefix_with_multibyte_and_high_bytes(target: Target) -> None:
    await target.kv.put_many([PutItem(k, b"v") for k in ["é1", "é2", "ê", "e", "🙂a", "🙂b"]])
    assert [k.name async for k in iter_keys(target.kv, prefix="é")] == ["é1", "é2"]
    assert [k.name async for k in iter_keys(target.kv, prefix="🙂")] == ["🙂a", "🙂b"]


@pytest.mark.parametrize("limit", [10, 1000])
async def test_list_limit_edges_are_accepted(target: Target, limit: int) -> None:
    await target.kv.put_many([PutItem(f"k{i:02d}", b"v") for i in range(12)])
    page = await target.kv.list(limit=limit)
    assert len(page.keys) == min(limit, 12)


@pytest.mark.parametrize("limit", [9, 1001, 0, -1])
async def test_list_limit_past_the_edges_is_refused(target: Target, limit: int) -> None:
    with pytest.raises(InvalidListLimit, match="key_count_limit"):
        await target.kv.list(limit=limit)


async def test_a_forged_cursor_is_refused(target: Target) -> None:
    with pytest.raises(InvalidCursor):
        await target.kv.list(cursor="not-a-cursor-we-gave-out!")


async def test_prefix_of_512_bytes_is_accepted_and_513_refused(target: Target) -> None:
    from brainbot.kv import KeyTooLong

    await target.kv.put("p" * 512, b"v")
    assert [k.name for k in (await target.kv.list(prefix="p" * 512)).keys] == ["p" * 512]
    with pytest.raises(KeyTooLong):
        await target.kv.list(prefix="p" * 513)


@pytest.mark.parametrize("cursor", ["c1.!!!!", "c1.", "bm90LWEtY3Vyc29y!"])
async def test_a_corrupt_cursor_is_refused(target: Target, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        await target.kv.list(cursor=cursor)
