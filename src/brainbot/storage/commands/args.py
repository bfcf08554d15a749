"""Arguments as redis-py takes them and Redis checks them, shared by the command families:
integers, expiry times, integer and float amounts, index ranges, score texts, glob patterns.

Two checks apply to every argument, in this order: what redis-py refuses on the client
(``DataError``: a bool, a type its encoder does not know, an ``ex`` that is not an int),
then what Redis refuses in its reply (``ResponseError``: text that is not a 64-bit integer,
an expiry out of range). redis-py sends most numbers as they are given, so ``"10"`` works
wherever Redis parses an integer."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from brainbot.errors import DataError, ResponseError

ExpiryT = int | str | dt.timedelta
AbsExpiryT = int | str | dt.datetime

INT64 = (-(2**63), 2**63 - 1)
INTEGER = re.compile(rb"^(0|-?[1-9][0-9]*)$")
NOT_AN_INTEGER = "value is not an integer or out of range"
_ENCODABLE = int | float | str | bytes | bytearray | memoryview


def encodable(value: object) -> None:
    """Refuse what redis-py's encoder refuses (before anything is sent)."""
    if isinstance(value, bool) or not isinstance(value, _ENCODABLE):
        raise DataError(
            f"Invalid input of type: '{type(value).__name__}'. "
            "Convert to a bytes, string, int or float first."
        )


def redis_int(value: object) -> int:
    """An integer argument as Redis reads what redis-py sends: an int, or the text of one
    (no sign but "-", no leading zeros or spaces) within 64 bits. A float goes out as
    "1.5" or "1.0", which Redis refuses too."""
    encodable(value)
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str | bytes | bytearray | memoryview):
        raw = value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)
        number = int(raw) if INTEGER.match(raw) else None
    if number is None or not INT64[0] <= number <= INT64[1]:
        raise ResponseError(NOT_AN_INTEGER)
    return number


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


def seconds(value: ExpiryT, name: str = "time") -> int:
    """A relative time in seconds as EXPIRE/SETEX take it (a timedelta, or an integer)."""
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds())
    return redis_int(value)


def millis(value: ExpiryT, name: str = "time") -> int:
    """A relative time in milliseconds as PEXPIRE/PSETEX take it."""
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds() * 1000)
    return redis_int(value)


def at_ms(value: AbsExpiryT, unit_ms: int) -> int:
    """An absolute time (EXPIREAT: ``unit_ms`` 1000, PEXPIREAT: 1) in epoch ms; a datetime
    is cut to whole units first, as redis-py does."""
    if isinstance(value, dt.datetime):
        stamp = value.timestamp()
        return int(stamp) * 1000 if unit_ms == 1000 else int(stamp * 1000)
    return redis_int(value) * unit_ms


def expire_at(amount: int, unit_ms: int, base_ms: int, command: str) -> int:
    """EXPIRE's arithmetic (``amount`` units after ``base_ms``; base 0 for EXPIREAT):
    Redis refuses what would overflow 64 bits; a time in the past is allowed."""
    if unit_ms == 1000:
        if not -(2**63 // 1000) <= amount <= INT64[1] // 1000:
            raise ResponseError(f"invalid expire time in '{command}' command")
        amount *= 1000
    if amount > INT64[1] - base_ms:
        raise ResponseError(f"invalid expire time in '{command}' command")
    return amount + base_ms


class ExpiryOption(NamedTuple):
    """One of SET/GETEX's EX/PX/EXAT/PXAT as redis-py sends it, before Redis checks it."""

    value: object
    unit_ms: int
    relative: bool

    def at(self, now_ms: int, command: str) -> int:
        """The absolute expiry (epoch ms), or Redis's error for this value."""
        amount = redis_int(self.value)
        if amount <= 0 or (self.unit_ms == 1000 and amount > INT64[1] // 1000):
            raise ResponseError(f"invalid expire time in '{command}' command")
        at = amount * self.unit_ms + (now_ms if self.relative else 0)
        if at > INT64[1]:
            raise ResponseError(f"invalid expire time in '{command}' command")
        return at


def _relative_option(value: object, name: str, unit_ms: int) -> int:
    """redis-py's own check of ``ex``/``px``: a timedelta or an int (and, for ``ex``
    only, a str of digits)."""
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds() * (1000 // unit_ms))
    if isinstance(value, int):
        encodable(value)  # a bool goes on to the encoder, which refuses it
        return value
    if name == "ex" and isinstance(value, str) and value.isdigit():
        try:
            return int(value)
        except ValueError:  # digits int() does not read ("²"): redis-py fails as well
            pass
    raise DataError(f"{name} must be datetime.timedelta or int")


def expiry_option(
    ex: ExpiryT | None, px: ExpiryT | None, exat: AbsExpiryT | None, pxat: AbsExpiryT | None
) -> ExpiryOption | None:
    """The EX/PX/EXAT/PXAT option given (the first, as redis-py picks it), checked as
    redis-py checks it; Redis's own checks are :meth:`ExpiryOption.at`'s."""
    if ex is not None:
        return ExpiryOption(_relative_option(ex, "ex", 1000), 1000, True)
    if px is not None:
        return ExpiryOption(_relative_option(px, "px", 1), 1, True)
    for when, unit_ms in ((exat, 1000), (pxat, 1)):
        if when is None:
            continue
        if isinstance(when, dt.datetime):
            stamp = when.timestamp()
            when = int(stamp) if unit_ms == 1000 else int(stamp * 1000)
        encodable(when)
        return ExpiryOption(when, unit_ms, False)
    return None


def expiry_from(
    ex: ExpiryT | None,
    px: ExpiryT | None,
    exat: AbsExpiryT | None,
    pxat: AbsExpiryT | None,
    command: str,
    now: int,
) -> int | None:
    """The absolute expiry (epoch ms) that EX/PX/EXAT/PXAT ask for, or None."""
    option = expiry_option(ex, px, exat, pxat)
    return None if option is None else option.at(now, command)


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
    return redis_int(amount)


def score_text(score: float) -> bytes:
    if math.isinf(score):
        return b"inf" if score > 0 else b"-inf"
    return format(score, ".17g").encode()


_LD_MIN_EXP = -16382  # a long double's smallest normal binary exponent
_LD_LIMIT = 2**16384  # rounding to this or beyond overflows to infinity


def _long_double(x: Fraction) -> Fraction | None:
    """``x`` rounded to the nearest x86-64 long double (64-bit significand, ties to even),
    or None when it overflows."""
    if x == 0:
        return x
    magnitude = abs(x)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1
    quantum = Fraction(2) ** (max(exponent, _LD_MIN_EXP) - 63)
    rounded = round(magnitude / quantum) * quantum  # Fraction's round: ties to even
    if rounded >= _LD_LIMIT:
        return None
    return rounded if x > 0 else -rounded


def _fixed17(x: Fraction) -> bytes:
    """printf("%.17Lf") of a long double, trailing zeros (and a bare ".") removed."""
    magnitude = abs(x)
    k = max(0, magnitude.denominator.bit_length() - 1)  # the denominator is 2**k
    scaled = magnitude.numerator * 5**k  # the value is scaled / 10**k, exactly
    if k > 17:
        q, r = divmod(scaled, 10 ** (k - 17))
        if 2 * r > 10 ** (k - 17) or (2 * r == 10 ** (k - 17) and q % 2):
            q += 1
    else:
        q = scaled * 10 ** (17 - k)
    digits = str(q).rjust(18, "0")
    text = (digits[:-17] + "." + digits[-17:]).rstrip("0").rstrip(".")
    text = ("-" if x < 0 else "") + text
    return b"0" if text in ("-0", "") else text.encode()


def long_double_sum(current: Decimal, increment: Decimal) -> bytes | None:
    """``current + increment`` as Redis computes INCRBYFLOAT/HINCRBYFLOAT on x86-64: both
    read as long doubles (strtold), added and rounded once more, printed as "%.17Lf" less
    trailing zeros; None when the sum overflows. (Decimal arithmetic differs for values
    like 5e-5 + 1e-20, where the long double's 64 bits do not reach.)"""
    a, b = _long_double(Fraction(current)), _long_double(Fraction(increment))
    if a is None or b is None:
        return None
    total = _long_double(a + b)
    return None if total is None else _fixed17(total)


def format_float(value: Decimal) -> bytes:
    """Redis's INCRBYFLOAT text: 17 significant digits, fixed-point, no trailing zeros."""
    text = format(Decimal(format(value, ".17g")), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return (text if text not in ("", "-0") else "0").encode()
