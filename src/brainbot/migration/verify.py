"""``brainbot verify``: every key of the source compared with KV, in list pages.

KV is listed once under the prefix into a ledger (1,000 entries a request: names, expiry
and metadata, never values). Then the source is read, planned exactly as the migration
plans it, and each planned entry is looked up: it must be there, with the digest of the
expected value (the migration stamps it into the entry's metadata), and an expiry
within a tolerance of the source's TTL; a legacy conversation must hold exactly its
messages (none missing, none extra). Values are read only where metadata cannot answer:

* keys missing from the listing, looked at again after a pause (KV is eventually
  consistent) before they are called lost;
* entries without a digest (written by an older version, or by the bot since);
* a random sample of the matching entries (``sample``, default 100), whose values are
  read and digested again: the check that the metadata tells the truth.

So verification costs about one request per 1,000 KV entries, plus one per 100 values
read. It can run at any time, on its own, and shares the API budget of the namespace it
is given. Keys the migration skips (and why) are counted, not reported as differences.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainbot.kv.namespace import KVNamespace, PutItem
from brainbot.migration.ledger import Ledger, Seen
from brainbot.migration.source import Reader, Record, connect, scan_batches
from brainbot.migration.transform import Options, Plan, digest, owner_items, plan
from brainbot.storage import codec

READ_CHUNK = 100  # values per bulk read


@dataclass(frozen=True, slots=True)
class Difference:
    key: str
    problem: str


@dataclass
class VerifyReport:
    checked: int = 0
    entries: int = 0
    differences: list[Difference] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    values_read: int = 0
    api_requests: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "entries": self.entries,
            "differences": [{"key": d.key, "problem": d.problem} for d in self.differences],
            "skipped": dict(self.skipped),
            "values_read": self.values_read,
            "api_requests": self.api_requests,
        }


def _expected_expiry(item: PutItem) -> tuple[int | None, int | None]:
    """(exact expiry in ms from the metadata, KV's own expiry in s) an item asks for."""
    meta = item.metadata if isinstance(item.metadata, dict) else {}
    exact = meta.get("x")
    return (exact if isinstance(exact, int) else None), item.expiration


def _compare(item: PutItem, seen: Seen, tolerance_ms: int) -> str | None:
    """What differs between a planned entry and the listed one (None: nothing)."""
    want = digest(item.value)
    if seen.digest is not None and seen.digest != want:
        return "value differs"
    meta = item.metadata if isinstance(item.metadata, dict) else {}
    got = seen.metadata if isinstance(seen.metadata, dict) else {}
    if codec.type_of(meta) != codec.type_of(got) and "t" in meta:
        return f"type is {codec.type_of(got)} on KV, {codec.type_of(meta)} in Redis"
    exact, kv_seconds = _expected_expiry(item)
    actual = codec.expiry_of(got)
    if (exact is None) != (actual is None):
        return f"TTL differs: {'none' if actual is None else 'set'} on KV"
    if exact is not None and actual is not None and abs(exact - actual) > tolerance_ms:
        return f"expiry differs by {abs(exact - actual)} ms"
    if exact is None and (kv_seconds is None) != (seen.expiration is None):
        return "TTL differs"
    return None


async def verify(
    source: str,
    *,
    namespace: KVNamespace,
    options: Options | None = None,
    match: str | None = None,
    type_: str | None = None,
    tls_ca_file: str | None = None,
    source_password: str | None = None,
    ttl_tolerance_ms: int = 5_000,
    recheck_after: float = 2.0,
    sample: int = 100,
    work_dir: Path | None = None,
) -> VerifyReport:
    """Compare every key of ``source`` with ``namespace`` (the caller opens and closes it)."""
    from brainbot.migration.run import _requests

    options = options or Options()
    report = VerifyReport()
    before = _requests(namespace)
    redis = connect(source, tls_ca_file=tls_ca_file, password=source_password)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="verify-") as scratch:
        ledger = Ledger(Path(scratch) / "kv-state.sqlite3")
        try:
            await ledger.load(namespace, options.prefix)
            check = _Check(namespace, ledger, report, ttl_tolerance_ms, sample)
            reader = Reader(redis, whole=options.whole)
            async for _, keys in scan_batches(redis, match=match, type_=type_):
                now_ms = int(time.time() * 1000)
                check.step([plan(r, options, now_ms) for r in await reader.read(keys)])
            owners, _ = owner_items(check.claims, options.prefix, int(time.time() * 1000))
            holder = Plan(Record(b"(owners)", "set", set(), -1), kind="owners", items=owners)
            check.step([holder])
            check.extra_messages(options.prefix)
            await check.read_values(recheck_after)
        finally:
            ledger.close()
            await redis.aclose()
    report.api_requests = _requests(namespace) - before
    return report


class _Check:
    def __init__(
        self,
        kv: KVNamespace,
        ledger: Ledger,
        report: VerifyReport,
        tolerance_ms: int,
        sample: int,
    ) -> None:
        self.kv = kv
        self.ledger = ledger
        self.report = report
        self.tolerance_ms = tolerance_ms
        self.sample = sample
        self.claims: dict[str, set[str]] = {}
        self.missing: list[tuple[Plan, PutItem]] = []
        self.unmarked: list[tuple[Plan, PutItem]] = []
        self.sampled: list[tuple[Plan, PutItem]] = []
        self.matched = 0
        self.conversations: dict[str, set[str]] = {}  # prefix -> expected message keys

    def step(self, plans: list[Plan]) -> None:
        items = [(p, item) for p in plans if not p.skipped for item in p.items]
        seen = self.ledger.lookup([item.key for _, item in items])
        for p in plans:
            if p.skipped:
                self.report.skipped[p.skipped] += 1
                continue
            if p.record.key != b"(owners)":
                self.report.checked += 1
            for owner, cid in p.claims:
                self.claims.setdefault(cid, set()).add(owner)
            if p.kind == "conversation" and p.items:
                prefix = p.items[0].key.rsplit("/", 1)[0] + "/"
                self.conversations.setdefault(prefix, set()).update(i.key for i in p.items)
        for p, item in items:
            self.report.entries += 1
            found = seen.get(item.key)
            if found is None:
                self.missing.append((p, item))
            elif found.digest is None:
                self.unmarked.append((p, item))  # no digest: only its value can tell
            elif problem := _compare(item, found, self.tolerance_ms):
                self.report.differences.append(Difference(p.name, problem))
            else:
                self.matched += 1  # reservoir sampling: a uniform sample of the matches
                if len(self.sampled) < self.sample:
                    self.sampled.append((p, item))
                elif (slot := random.randrange(self.matched)) < self.sample:
                    self.sampled[slot] = (p, item)

    def extra_messages(self, prefix: str) -> None:
        for conversation, expected in self.conversations.items():
            extra = [n for n in self.ledger.names(prefix=conversation) if n not in expected]
            if extra:
                name = conversation[len(prefix) :].removeprefix("conv/").rstrip("/")
                self.report.differences.append(
                    Difference(
                        f"conversation {name}", f"{len(extra)} message(s) on KV not in Redis"
                    )
                )

    async def _values(self, pairs: list[tuple[Plan, PutItem]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        keys = [item.key for _, item in pairs]
        for start in range(0, len(keys), READ_CHUNK):
            found.update(await self.kv.get_many(keys[start : start + READ_CHUNK]))
        self.report.values_read += len(keys)
        return found

    async def read_values(self, recheck_after: float) -> None:
        """Read what metadata cannot answer: missing keys (after a pause), entries without
        a digest, and the sample."""
        if self.missing:
            await asyncio.sleep(recheck_after)
        for pairs in (self.missing, self.unmarked, self.sampled):
            if not pairs:
                continue
            found = await self._values(pairs)
            for p, item in pairs:
                entry = found.get(item.key)
                if entry is None:
                    self.report.differences.append(Difference(p.name, "missing in KV"))
                    continue
                if digest(entry.value) != digest(item.value):
                    self.report.differences.append(Difference(p.name, "value differs"))
                    continue
                seen = Seen(None, None, None, entry.expiration, entry.metadata)
                if problem := _compare(item, seen, self.tolerance_ms):
                    self.report.differences.append(Difference(p.name, problem))
