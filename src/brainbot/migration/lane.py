"""``python -m brainbot.migration.lane LEDGER``: one verify lane, in a process of its own.

``verify`` of a big source starts one per CPU (planning is Python: one core each). The
lane reads its job (``verify.Lane``, JSON) on stdin, so no password is in its argv, reads
and plans its share of the source's keys into the ledger file LEDGER, and answers with a
``verify.LaneResult`` as JSON on stdout, or ``{"error", "type"}`` and exit status 1.
A separate module, not ``multiprocessing``: that would run the caller's ``__main__`` again.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict
from pathlib import Path

import orjson

from brainbot.errors import BrainbotError
from brainbot.migration.heap import tune_for_bulk
from brainbot.migration.verify import Lane, read_lane


def main() -> int:
    tune_for_bulk()
    lane = Lane.from_json(sys.stdin.buffer.read())
    try:
        result = asyncio.run(read_lane(lane, Path(sys.argv[1])))
    except BrainbotError as exc:
        sys.stdout.buffer.write(orjson.dumps({"error": str(exc), "type": type(exc).__name__}))
        return 1
    sys.stdout.buffer.write(orjson.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
