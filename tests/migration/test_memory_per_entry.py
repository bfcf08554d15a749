"""What a migration holds per KV entry in flight: JSON kept as bytes is the size of its
text. orjson 3.12+ hands back bytes that keep a 4 KiB buffer however short the JSON; held
for every entry of the batches in flight, that was 3.6 KB an entry (``json_bytes``)."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable

import pytest

from brainbot import json_bytes
from brainbot.migration.run import backup_line, manifest_line
from brainbot.migration.source import Record
from brainbot.migration.transform import Options, plan
from brainbot.storage import codec
from brainbot.storage.codec import Item

NOW_MS = int(time.time() * 1000)


def held_per_object(make: Callable[[int], bytes]) -> tuple[float, float]:
    """Bytes allocated per result kept, and the results' average length."""
    tracemalloc.start()
    try:
        kept = [make(i) for i in range(2_000)]
        held = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    return held, sum(map(len, kept)) / len(kept)


def _record(i: int) -> Record:
    return Record(f"user:{i}".encode(), "hash", {b"name": f"user {i}".encode()}, -1)


@pytest.mark.parametrize(
    "make",
    [
        lambda i: json_bytes.dumps({"a": i}),
        lambda i: codec.encode(Item("hash", {b"name": f"user {i}".encode()}, None))[0],
        lambda i: codec.encode(Item("list", [b"a", b"b", str(i).encode()], None))[0],
        lambda i: backup_line(_record(i), NOW_MS),
        lambda i: manifest_line("run", p := plan(_record(i), Options(), NOW_MS, "m", "t"), p.items),
    ],
    ids=["json_bytes", "hash value", "list value", "backup line", "manifest line"],
)
def test_json_kept_as_bytes_holds_about_its_own_size(make: Callable[[int], bytes]) -> None:
    held, length = held_per_object(make)
    assert held < length + 120, f"{held:.0f} bytes held for {length:.0f} bytes of JSON"


def test_a_batch_entry_in_flight_holds_under_one_kilobyte() -> None:
    """Plans of mixed keys (generic and conversation messages), with their manifest lines,
    as a batch holds them until KV acknowledges it: the weight the run budgets per entry
    (``run.ENTRY_WEIGHT``) covers them."""
    from brainbot.migration.run import ENTRY_WEIGHT

    messages = [
        json.dumps({"role": "user", "content": f"m{m}", "timestamp": 1_700_000_000 + m}).encode()
        for m in range(10)
    ]
    records = [_record(i) for i in range(1_000)] + [
        Record(f"conversation:{i}".encode(), "list", messages, -1) for i in range(100)
    ]
    tracemalloc.start()
    try:
        plans = [plan(r, Options(), NOW_MS, "0123abcd", "tag") for r in records]
        lines = [manifest_line("run", p, p.items) for p in plans]
        items = [item for p in plans for item in p.items]
        del plans
        per_entry = tracemalloc.get_traced_memory()[0] / len(items)
    finally:
        tracemalloc.stop()
    assert lines
    assert per_entry < 1024, f"{per_entry:.0f} bytes per entry"
    assert per_entry + 512 <= ENTRY_WEIGHT  # room for its part of the request body or rows
