"""JSON as bytes that are kept: orjson's output, right-sized.

orjson 3.12 and later hand back a bytes object that keeps the whole buffer it wrote into,
at least 4 KiB however short the JSON (orjson 3.13.0: 4,097 bytes held for ``{"a":0}``;
home-assistant/core#181240 trims its cached fragments for the same reason). For a body
sent at once that costs nothing; for what is held, a migration's encoded values, manifest
and backup lines in flight, or values in the read-your-writes overlay, it is ten to forty
times their size: measured, 3.6 KB per KV entry of a migration batch, most of it this.
``dumps`` copies the text into a bytes object of its own size (about 0.15 µs).
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any, option: int | None = None) -> bytes:
    """``orjson.dumps(value, option=option)``, in a bytes object no bigger than the text."""
    return memoryview(orjson.dumps(value, option=option)).tobytes()  # (bytes(...): slower)
