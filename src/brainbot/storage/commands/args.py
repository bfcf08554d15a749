"""Arguments as redis-py takes them and Redis checks them, shared by the command families:
expiry times, integer and float amounts, index ranges, score texts, glob patterns."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal

from brainbot.errors import DataError, ResponseError

ExpiryT = int | dt.timedelta
AbsExpiryT = int | dt.datetime

INT64 = (-(2**63), 2**63 - 1)
INTEGER = re.compile(rb"^(0|-?[1-9][0-9]*)$")


def redis_glob(pattern: str) -> re.Pattern[str]:
    """Compile a Redis glob (``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``) to a regex."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("^", "]") else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                chars = re.sub(r"([\]\[\\^])", r"\\\1", body)
                out.append(f"[{'^' if negate else ''}{chars}]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first special character: a KV list prefix."""
    match = re.match(r"[^*?\[\\]*", pattern)
    return match.group(0) if match else ""


def seconds(value: ExpiryT, name: str) -> int:
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an int or a timedelta, not {type(value).__name__}")
    return value


def millis(value: ExpiryT, name: str) -> int:
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an int or a timedelta, not {type(value).__name__}")
    return value


def at_ms(value: AbsExpiryT, unit_ms: int) -> int:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"expiry must be an int or a datetime, not {type(value).__name__}")
    return value * unit_ms


def expiry_from(
    ex: ExpiryT | None,
    px: ExpiryT | None,
    exat: AbsExpiryT | None,
    pxat: AbsExpiryT | None,
    command: str,
    now: int,
) -> int | None:
    """The absolute expiry (epoch ms) that EX/PX/EXAT/PXAT ask for, or None."""
    if ex is not None:
        secs = seconds(ex, "ex")
        if secs <= 0:
            raise ResponseError(f"invalid expire time in '{command}' command")
        return now + secs * 1000
    if px is not None:
        ms = millis(px, "px")
        if ms <= 0:
            raise ResponseError(f"invalid expire time in '{command}' command")
        return now + ms
    if exat is not None or pxat is not None:
        at = at_ms(exat, 1000) if exat is not None else at_ms(pxat, 1)  # type: ignore[arg-type]
        if at <= 0:
            raise ResponseError(f"invalid expire time in '{command}' command")
        return at
    return None


def index_range(n: int, start: int, end: int) -> range:
    """Redis's inclusive, negative-aware index range, clamped to a list of length n."""
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = n + end
    end = min(end, n - 1)
    return range(start, end + 1) if start <= end else range(0)


def int_amount(amount: object) -> int:
    """An INCRBY/HINCRBY amount as Redis takes it: a whole number within 64 bits (redis-py
    sends a float as "1.5" or "1.0", which Redis refuses as not an integer)."""
    if isinstance(amount, bool):
        raise DataError("Invalid input of type: 'bool'.")
    if isinstance(amount, str | bytes):
        raw = amount.encode() if isinstance(amount, str) else amount
        amount = int(raw) if INTEGER.match(raw) else None
    if not isinstance(amount, int) or not INT64[0] <= amount <= INT64[1]:
        raise ResponseError("value is not an integer or out of range")
    return amount


def score_text(score: float) -> bytes:
    if math.isinf(score):
        return b"inf" if score > 0 else b"-inf"
    return format(score, ".17g").encode()


def format_float(value: Decimal) -> bytes:
    """Redis's INCRBYFLOAT text: 17 significant digits, fixed-point, no trailing zeros."""
    text = format(Decimal(format(value, ".17g")), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return (text if text not in ("", "-0") else "0").encode()
