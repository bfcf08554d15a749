"""``brainbot verify``: every key of the source compared with KV, each difference listed.

For every Redis key the migration would write, the KV side must hold exactly the planned
entries: same type and value, an expiry within a tolerance of the source's TTL, and for a
legacy conversation exactly its messages (no missing, no duplicated ones). A key missing
on KV is looked at again after a pause before it is called lost, because KV is eventually
consistent. Keys the migration skips (and why) are counted, not reported as differences.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from brainbot.kv.namespace import Entry, KVNamespace, PutItem, iter_keys
from brainbot.migration.source import Record, connect, read, scan_batches
from brainbot.migration.transform import Options, Plan, owner_items, plan
from brainbot.storage import codec


@dataclass(frozen=True, slots=True)
class Difference:
    key: str
    problem: str


@dataclass
class VerifyReport:
    checked: int = 0
    differences: list[Difference] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "differences": [{"key": d.key, "problem": d.problem} for d in self.differences],
            "skipped": dict(self.skipped),
        }


def _expected_entry(item: PutItem) -> Entry:
    value = item.value.encode() if isinstance(item.value, str) else item.value
    return Entry(value, item.expiration, item.metadata)


def _compare(p: Plan, item: PutItem, actual: Entry, tolerance_ms: int) -> str | None:
    expected = _expected_entry(item)
    if p.kind in ("session", "owners"):
        return None  # an owner's index entry: that it exists is all it says
    if p.kind == "conversation":
        if json.loads(actual.value) != json.loads(expected.value):
            return f"message {item.key} differs"
        return None
    want, got = codec.decode(expected), codec.decode(actual)
    if want.type != got.type:
        return f"type is {got.type} on KV, {want.type} in Redis"
    if got.data != want.data:
        return "value differs"
    if (want.expire_ms is None) != (got.expire_ms is None):
        return f"TTL differs: {'none' if got.expire_ms is None else 'set'} on KV"
    drift = abs((want.expire_ms or 0) - (got.expire_ms or 0))
    if drift > tolerance_ms:
        return f"expiry differs by {drift} ms"
    return None


async def verify(
    source: str,
    *,
    namespace: KVNamespace,
    options: Options | None = None,
    match: str | None = None,
    type_: str | None = None,
    tls_ca_file: str | None = None,
    ttl_tolerance_ms: int = 5_000,
    recheck_after: float = 2.0,
) -> VerifyReport:
    """Compare every key of ``source`` with ``namespace`` (the caller opens and closes it)."""
    options = options or Options()
    report = VerifyReport()
    redis = connect(source, tls_ca_file=tls_ca_file)
    kv = namespace
    missing: list[tuple[Plan, PutItem]] = []
    claims: dict[str, set[str]] = {}
    try:
        async for _, keys in scan_batches(redis, match=match, type_=type_):
            now_ms = int(time.time() * 1000)
            plans = [plan(r, options, now_ms) for r in await read(redis, keys)]
            for p in plans:
                if p.skipped:
                    report.skipped[p.skipped] += 1
                    continue
                report.checked += 1
                for owner, cid in p.claims:
                    claims.setdefault(cid, set()).add(owner)
                missing += await _check(kv, p, report, ttl_tolerance_ms)
        owners, _ = owner_items(claims, options.prefix, int(time.time() * 1000))
        owned = Plan(Record(b"(owners)", "set", set(), -1), kind="owners", items=owners)
        missing += await _check(kv, owned, report, ttl_tolerance_ms)
        if missing:  # eventual consistency: look again before calling anything lost
            await asyncio.sleep(recheck_after)
            found = await kv.get_many([item.key for _, item in missing])
            for p, item in missing:
                entry = found[item.key]
                problem = (
                    "missing in KV" if entry is None else _compare(p, item, entry, ttl_tolerance_ms)
                )
                if problem:
                    report.differences.append(Difference(p.name, problem))
    finally:
        await redis.aclose()
    return report


async def _check(
    kv: KVNamespace, p: Plan, report: VerifyReport, tolerance_ms: int
) -> list[tuple[Plan, PutItem]]:
    found = await kv.get_many([item.key for item in p.items])
    missing = []
    for item in p.items:
        entry = found[item.key]
        if entry is None:
            missing.append((p, item))
            continue
        problem = _compare(p, item, entry, tolerance_ms)
        if problem:
            report.differences.append(Difference(p.name, problem))
    if p.kind == "conversation" and p.items:
        prefix = p.items[0].key.rsplit("/", 1)[0] + "/"
        stored = {info.name async for info in iter_keys(kv, prefix=prefix)}
        extra = stored - {item.key for item in p.items}
        if extra:
            report.differences.append(
                Difference(p.name, f"{len(extra)} message(s) on KV not in Redis")
            )
    return missing
