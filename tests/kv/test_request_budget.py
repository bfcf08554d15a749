"""The pacer: never more than the budget in any window, proven on a fake clock and live."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from brainbot.kv import RateLimited, RequestBudget, RetryPolicy
from brainbot.kv.faults import Faults
from tests.support.kv import fault_args, rest_client
from tests.support.processes import start_kv_server


class VirtualTime:
    """A clock that only moves when someone sleeps: pacing proofs without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


@pytest.mark.parametrize(("limit", "window"), [(1200, 300.0), (10, 1.0), (1, 5.0)])
async def test_never_more_than_the_budget_in_any_window(limit: int, window: float) -> None:
    clock = VirtualTime()
    budget = RequestBudget(limit, window, clock=clock, sleep=clock.sleep)
    n = limit * 3 + 7
    starts: list[float] = []

    async def request() -> None:
        async with budget.slot():
            starts.append(clock())
            await asyncio.sleep(0)  # let the others queue while this one is in flight

    await asyncio.gather(*(request() for _ in range(n)))
    assert len(starts) == n
    assert max_in_any_window(starts, window) <= limit
    # and it does not idle: each window is used in full
    assert max(starts) - min(starts) <= (n - 1) // limit * window + 1e-6


async def test_pause_holds_every_request_back() -> None:
    clock = VirtualTime()
    budget = RequestBudget(100, 1.0, clock=clock, sleep=clock.sleep)
    budget.pause(300)
    async with budget.slot():
        assert clock() >= 1000.0 + 300


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        RequestBudget(0, 1.0)
    with pytest.raises(ValueError, match="window > 0"):
        RequestBudget(10, 0)


async def test_client_paced_to_the_server_budget_is_never_locked_out(
    tmp_path: object, api_token: str
) -> None:
    """The local server enforces a Cloudflare-like budget with lockout; with the same budget
    configured, the client gets through 45 requests with zero 429s (no retries allowed)."""
    faults = Faults(budget=15, budget_window=1.0)
    service = start_kv_server(tmp_path / "paced", api_token, *fault_args(faults))  # type: ignore[operator]
    try:
        async with rest_client(
            service.url,
            api_token,
            "paced",
            budget=RequestBudget(15, 1.0),
            retry=RetryPolicy(attempts=1),
        ) as kv:
            await asyncio.gather(*(kv.put(f"k{i}", b"v") for i in range(45)))
            assert kv.budget.requests == 45
        async with rest_client(
            service.url,
            api_token,
            "paced",
            budget=RequestBudget(10**6, 1.0),
            retry=RetryPolicy(attempts=1),
        ) as greedy:
            with pytest.raises(RateLimited) as caught:
                await asyncio.gather(*(greedy.get(f"k{i}") for i in range(40)))
            assert caught.value.code == 971
            assert caught.value.retry_after is not None
    finally:
        service.stop()


async def test_bulk_work_leaves_the_reserved_share_to_live_traffic() -> None:
    clock = VirtualTime()
    budget = RequestBudget(10, 60.0, reserved_for_live=3, clock=clock, sleep=clock.sleep)
    for _ in range(7):  # a migration spends what bulk may spend
        async with budget.slot():
            pass
    started = clock()
    for _ in range(3):  # the bot still gets its three, at once
        async with budget.slot(live=True, within=1.0):
            pass
    assert clock() == started
    bulk_done = []

    async def bulk() -> None:
        async with budget.slot():
            bulk_done.append(clock())

    await bulk()  # bulk waits for the window to roll over, it is never refused
    assert bulk_done == [started + 60.0]


async def test_live_traffic_fails_fast_when_no_slot_frees_in_time() -> None:
    from brainbot.errors import BudgetExhausted, Unavailable

    clock = VirtualTime()
    budget = RequestBudget(5, 300.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        async with budget.slot(live=True, within=2.0):
            pass
    started = clock()
    with pytest.raises(BudgetExhausted) as caught:
        async with budget.slot(live=True, within=2.0):
            pass
    assert clock() == started  # it did not wait for a slot that frees in 300 s
    assert isinstance(caught.value, Unavailable)
    assert 299 <= caught.value.retry_after <= 300
    clock.now += 300  # once the window rolls over, live traffic gets through again
    async with budget.slot(live=True, within=2.0):
        pass


async def test_a_live_request_does_not_queue_behind_bulk_waiters() -> None:
    clock = VirtualTime()
    budget = RequestBudget(4, 60.0, reserved_for_live=2, clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def request(kind: str) -> None:
        async with budget.slot(live=kind == "live", within=1.0 if kind == "live" else None):
            order.append(kind)

    await asyncio.gather(*(request("bulk") for _ in range(6)), request("live"))
    assert order.index("live") <= 2  # among the first, not after the waiting bulk ones
