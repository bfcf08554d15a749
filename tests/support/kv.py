"""Clients of the local KV servers for tests: the REST client without a budget, the
command-line form of a set of faults for ``brainbot kv serve``, and an endless answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from brainbot.kv import CloudflareKV, RequestBudget
from brainbot.kv.faults import Faults

UNLIMITED = 10**9


def rest_client(url: str, token: str, namespace_id: str, **kwargs: object) -> CloudflareKV:
    kwargs.setdefault("budget", RequestBudget(UNLIMITED, 1.0))
    kwargs.setdefault("account_id", "test-account")  # the account of start_kv_server
    return CloudflareKV(
        namespace_id=namespace_id,
        api_token=token,
        base_url=url,
        **kwargs,  # type: ignore[arg-type]
    )


def fault_args(faults: Faults) -> list[str]:
    args = []
    for option, value in (
        ("--error-rate", faults.error_rate),
        ("--error-429-share", faults.error_429_share),
        ("--retry-after", faults.retry_after),
        ("--slow-rate", faults.slow_rate),
        ("--slow-seconds", faults.slow_seconds),
        ("--bulk-failure-rate", faults.bulk_failure_rate),
        ("--budget", faults.budget),
        ("--budget-window", faults.budget_window),
        ("--list-lag", faults.list_lag),
        ("--bulk-latency", faults.bulk_latency),
        ("--seed", faults.seed),
    ):
        if value is not None:
            args += [option, str(value)]
    if faults.key_write_limit:
        args.append("--key-write-limit")
    return args


async def server_stats(url: str, token: str) -> dict[str, object]:
    """What ``brainbot kv serve`` at ``url`` has counted: API requests, by route."""
    root = url.split("/client/v4")[0]
    async with httpx.AsyncClient() as http:
        response = await http.get(
            root + "/__brainbot/stats", headers={"Authorization": f"Bearer {token}"}
        )
        response.raise_for_status()
        result: dict[str, object] = response.json()["result"]
        return result


class Endless(httpx.AsyncByteStream):
    """An answer body of ``limit`` bytes (a broken server's endless one); ``sent`` counts
    what the client read of it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.sent = limit, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = b"a" * (1 << 20)
        while self.sent < self.limit:
            self.sent += len(chunk)
            yield chunk
