"""Sorted-set arguments as Redis reads them, and the ranges it walks.

* Score bounds (ZRANGEBYSCORE, ZCOUNT, ZREMRANGEBYSCORE, ZRANGE BYSCORE) are read with C's
  ``strtod``: ``"(1.5"`` is exclusive; ``"-inf"``, ``"+inf"``, hex and leading blanks are
  accepted, NaN is not ("min or max is not a float"). Scores given as values (ZADD,
  ZINCRBY, WEIGHTS) go through Redis's stricter ``string2d``: no blank, no overflow, no
  underflow to zero.
* Lex bounds are ``-``, ``+``, ``[member`` (inclusive) or ``(member`` (exclusive)
  ("min or max not valid string range item").
* Integers (ranks, LIMIT, counts) are Redis's ``string2l``: no sign but ``-``, no leading
  zero, within 64 bits.
* The walks follow Redis's compact (listpack) encoding, which every sorted set of up to 128
  short members uses. A lex range over members of different scores is left unspecified by
  Redis's documentation; these walks give what Redis answers for such sets.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from brainbot.errors import ResponseError
from brainbot.storage.commands.args import INT64, index_range, redis_glob

Pair = tuple[bytes, float]
"""A member and its score."""

NOT_AN_INTEGER = "value is not an integer or out of range"

_BLANKS = b" \t\n\v\f\r"  # C's isspace
_DECIMAL = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_HEX = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)([pP][+-]?[0-9]+)?")
_INFINITY = re.compile(rb"([+-]?)(inf|infinity)", re.IGNORECASE)
_LONG = re.compile(rb"0|-?[1-9][0-9]*")
_UNSIGNED = re.compile(rb"[+-]?[0-9]+")


# -- numbers ------------------------------------------------------------------------------


def _strtod(text: bytes) -> tuple[float, bool] | None:
    """C's ``strtod`` when it reads all of ``text`` (after leading blanks): the value, and
    whether it was out of range (overflow to infinity, underflow to zero). None when it
    stops before the end or reads NaN."""
    body = text.lstrip(_BLANKS)
    if match := _INFINITY.fullmatch(body):
        return (-math.inf if match.group(1) == b"-" else math.inf), False
    if match := _DECIMAL.fullmatch(body):
        value = float(body)
        digits = match.group(1)
    elif match := _HEX.fullmatch(body):
        try:
            value = float.fromhex(body.decode("ascii"))
        except OverflowError:
            value = -math.inf if match.group(1) == b"-" else math.inf
        digits = match.group(2)
    else:
        return None
    underflow = value == 0 and digits.strip(b"0.") != b""
    return value, math.isinf(value) or underflow


def parse_double(raw: bytes, message: str) -> float:
    """A score given as a value (ZADD, ZINCRBY, WEIGHTS), read as Redis's ``string2d``."""
    parsed = None if not raw or raw[0] in _BLANKS else _strtod(raw)
    if parsed is None or parsed[1]:
        raise ResponseError(message)
    return parsed[0]


def parse_long(raw: bytes, message: str = NOT_AN_INTEGER) -> int:
    """A 64-bit integer argument, read as Redis's ``string2l``."""
    if _LONG.fullmatch(raw) is None:
        raise ResponseError(message)
    value = int(raw)
    if not INT64[0] <= value <= INT64[1]:
        raise ResponseError(message)
    return value


def check_cursor(raw: bytes) -> None:
    """A SCAN cursor as Redis reads it (``strtoul``: an optional sign, digits, 64 bits)."""
    if raw and (_UNSIGNED.fullmatch(raw) is None or abs(int(raw)) >= 2**64):
        raise ResponseError("invalid cursor")


def member_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A glob over members as bytes (``?`` is one byte, as in Redis's ``stringmatchlen``)."""
    regex = redis_glob(pattern.decode("latin-1"))
    return lambda member: regex.match(member.decode("latin-1")) is not None


# -- score ranges -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreRange:
    low: float
    high: float
    low_open: bool
    high_open: bool

    def above_low(self, score: float) -> bool:
        return score > self.low if self.low_open else score >= self.low

    def below_high(self, score: float) -> bool:
        return score < self.high if self.high_open else score <= self.high

    def __contains__(self, score: float) -> bool:
        return self.above_low(score) and self.below_high(score)


def _score_bound(raw: bytes) -> tuple[float, bool]:
    open_ = raw[:1] == b"("
    text = raw[1:] if open_ else raw
    if not text:  # strtod reads nothing and stops at the end: Redis takes it as 0
        return 0.0, open_
    parsed = _strtod(text)
    if parsed is None:  # out of range is fine here: Redis does not look at errno
        raise ResponseError("min or max is not a float")
    return parsed[0], open_


def score_range(low: bytes, high: bytes) -> ScoreRange:
    (low_value, low_open), (high_value, high_open) = _score_bound(low), _score_bound(high)
    return ScoreRange(low_value, high_value, low_open, high_open)


# -- lex ranges ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LexBound:
    value: bytes
    open: bool
    edge: int = 0
    """-1 for ``-`` (below every member), 1 for ``+`` (above every member), else 0."""

    def compare(self, member: bytes) -> int:
        """Where ``member`` is relative to this bound: -1 below, 0 on it, 1 above."""
        if self.edge:
            return -self.edge
        return (member > self.value) - (member < self.value)


def _lex_bound(raw: bytes) -> LexBound:
    first, rest = raw[:1], raw[1:]
    if first in (b"-", b"+") and not rest:
        return LexBound(b"", True, -1 if first == b"-" else 1)
    if first in (b"[", b"("):
        return LexBound(rest, first == b"(")
    raise ResponseError("min or max not valid string range item")


@dataclass(frozen=True, slots=True)
class LexRange:
    low: LexBound
    high: LexBound

    def above_low(self, member: bytes) -> bool:
        side = self.low.compare(member)
        return side > 0 if self.low.open else side >= 0

    def below_high(self, member: bytes) -> bool:
        side = self.high.compare(member)
        return side < 0 if self.high.open else side <= 0

    def empty(self) -> bool:
        """Redis's test for a range nothing can be in (``sdscmplex`` of the two bounds)."""
        low, high = self.low, self.high
        if low.edge and low.edge == high.edge:
            order = 0
        elif low.edge == -1 or high.edge == 1:
            order = -1
        elif low.edge == 1 or high.edge == -1:
            order = 1
        else:
            order = (low.value > high.value) - (low.value < high.value)
        return order > 0 or (order == 0 and (low.open or high.open))


def lex_range(low: bytes, high: bytes) -> LexRange:
    return LexRange(_lex_bound(low), _lex_bound(high))


# -- walks over a sorted set ordered by (score, member) -----------------------------------------


def by_rank(ordered: Sequence[Pair], start: int, end: int, reverse: bool) -> builtins.list[Pair]:
    sequence = ordered[::-1] if reverse else ordered
    return [sequence[i] for i in index_range(len(sequence), start, end)]


def _window(pairs: builtins.list[Pair], offset: int, limit: int) -> builtins.list[Pair]:
    """LIMIT offset count: a negative offset gives nothing, a negative count everything."""
    if offset < 0:
        return []
    pairs = pairs[offset:]
    return pairs if limit < 0 else pairs[:limit]


def by_score(
    ordered: Sequence[Pair], scores: ScoreRange, reverse: bool, offset: int = 0, limit: int = -1
) -> builtins.list[Pair]:
    sequence = ordered[::-1] if reverse else ordered
    return _window([p for p in sequence if p[1] in scores], offset, limit)


def by_lex(
    ordered: Sequence[Pair], lex: LexRange, reverse: bool, offset: int = 0, limit: int = -1
) -> builtins.list[Pair]:
    """Redis's walk: from the first member in range (the last, in reverse), skip ``offset``
    members, then take members until one is past the far bound. Over members of one score
    this is simply the members in range."""
    n = len(ordered)
    if n == 0 or lex.empty():
        return []
    if not lex.above_low(ordered[-1][0]) or not lex.below_high(ordered[0][0]):
        return []
    near, far = (lex.below_high, lex.above_low) if reverse else (lex.above_low, lex.below_high)
    step = -1 if reverse else 1
    start = None
    for i in range(n - 1, -1, -1) if reverse else range(n):
        if near(ordered[i][0]):
            start = i if far(ordered[i][0]) else None
            break
    if start is None or offset < 0:
        return []
    taken: builtins.list[Pair] = []
    i = start + step * offset
    while 0 <= i < n and limit != 0 and far(ordered[i][0]):
        taken.append(ordered[i])
        limit -= 1
        i += step
    return taken
