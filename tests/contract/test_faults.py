"""What only a faulty server can show: partial bulk failures, the API budget, list lag.

The embedded KV cannot fail part of a bulk write (one SQLite transaction) and is strongly
consistent; Miniflare simulates neither rate limits nor eventual consistency. Those
targets skip here and say so by name."""

from __future__ import annotations

import asyncio

from brainbot.kv import Entry, PutItem, iter_keys
from brainbot.kv.faults import Faults
from tests.contract.conftest import Target


async def test_partial_bulk_failures_are_retried_until_every_key_is_written(target: Target) -> None:
    faults = Faults(bulk_failure_rate=0.2, seed=7)  # 0.2**10 per key: never left failing
    async with target.faulty(faults, "cannot report unsuccessful_keys for part of a bulk") as kv:
        items = [PutItem(f"k{i:04d}", bytes([i % 256]) * 5) for i in range(2_000)]
        result = await kv.put_many(items)
        assert result.ok
        assert result.successful_key_count == 2_000
        got = await kv.get_many([item.key for item in items])
        assert all(got[item.key] == Entry(bytes(item.value)) for item in items)  # type: ignore[arg-type]
        deleted = await kv.delete_many([item.key for item in items])
        assert deleted.ok
        assert [k async for k in iter_keys(kv)] == []


async def test_list_lags_behind_writes_then_catches_up(target: Target) -> None:
    # a lag far longer than the few milliseconds the checks take, even on a busy machine
    faults = Faults(list_lag=3.0)
    async with target.faulty(faults, "does not simulate eventual consistency of list") as kv:
        await kv.put("old", b"v")
        await asyncio.sleep(3.2)
        await kv.put("new", b"v")
        await kv.delete("old")
        assert await kv.get("new") == Entry(b"v")  # reads of one key are not lagged here
        assert [k.name async for k in iter_keys(kv)] == ["old"]  # list still shows the past
        await asyncio.sleep(3.2)
        assert [k.name async for k in iter_keys(kv)] == ["new"]


async def test_paced_client_never_trips_the_api_budget_lockout(target: Target) -> None:
    from brainbot.kv import CloudflareKV, RequestBudget, RetryPolicy

    faults = Faults(budget=12, budget_window=1.0)
    async with target.faulty(faults, "does not simulate Cloudflare's API budget") as kv:
        assert isinstance(kv, CloudflareKV)
        kv.budget = RequestBudget(12, 1.0)
        kv.retry = RetryPolicy(attempts=1)  # a single 429 would fail the test
        await asyncio.gather(*(kv.put(f"k{i}", b"v") for i in range(30)))
        assert kv.budget.requests == 30


async def test_own_writes_are_read_back_while_list_lags(target: Target) -> None:
    """ReadYourWrites' contract: over a namespace whose lists trail its writes, this
    process's lists and gets show its own puts and deletes at once, page by page."""
    from brainbot.kv import ReadYourWrites

    async with target.faulty(
        Faults(list_lag=2.0), "does not simulate eventual consistency of list"
    ) as lagging:
        await lagging.put_many([PutItem(f"k{i:02d}", b"old") for i in range(0, 30, 2)])
        await asyncio.sleep(2.2)  # those are listed by now
        own = ReadYourWrites(lagging, 60.0)
        await own.put_many([PutItem(f"k{i:02d}", b"new") for i in range(1, 30, 2)])
        await own.delete_many([f"k{i:02d}" for i in range(0, 10, 2)])
        await own.put("k04", b"again", metadata={"n": 1})
        expected = sorted({f"k{i:02d}" for i in range(30)} - {"k00", "k02", "k06", "k08"})
        pages = []
        cursor = None
        while True:
            page = await own.list(limit=10, cursor=cursor)
            pages.append([k.name for k in page.keys])
            if page.cursor is None:
                break
            cursor = page.cursor
        assert all(len(p) <= 10 for p in pages)
        assert [name for p in pages for name in p] == expected  # each once, in order
        assert [k.metadata for k in (await own.list(prefix="k04")).keys] == [{"n": 1}]
        assert await own.get("k03") == Entry(b"new")
        assert await own.get("k00") is None
        # without this process's memory the list still shows the past
        assert [k.name async for k in iter_keys(lagging)] == [f"k{i:02d}" for i in range(0, 30, 2)]
