"""The cyclic garbage collector, tuned for a process that does bulk work.

A migration or verify keeps hundreds of thousands of objects alive (the records and
entries of the batches in flight) and allocates millions more that die young. With
CPython's default thresholds (700, 10, 10) the collector runs every 700 allocations and
every hundredth run scans the whole old generation; measured on 200,000 mixed keys, that
was about a quarter of ``brainbot migrate``'s CPU. Nothing a run makes is cyclic garbage
that must go promptly (reference counting frees the rest at once), so fewer, larger young
collections cost next to no memory. Process-wide, so only the processes that do nothing
else call it: the ``migrate``/``verify``/``rollback`` commands and the verify lanes.
"""

from __future__ import annotations

import gc

BULK_THRESHOLDS = (10_000, 10, 10)


def tune_for_bulk() -> None:
    """Set the collector's thresholds for bulk work (for the rest of the process)."""
    gc.set_threshold(*BULK_THRESHOLDS)
