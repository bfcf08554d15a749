"""What the service accepts from a client, checked before anything else happens.

* bodies are JSON (``Content-Type: application/json``, else 415), at most ``max_bytes``
  (else 413), sent within ``within`` seconds (else 408);
* JSON that cannot be parsed, nests deeper than 32 levels, or holds text that is not
  UTF-8 (a lone surrogate escaped as ``\\ud800``) is a 400, like any other bad input;
* path parameters, query parameters and headers get the same text check.

Every failure is a typed error of the ``InvalidInput`` branch: the service answers 4xx,
never 500, and nothing has been read from or written to storage yet.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from brainbot.errors import BadRequest, RequestTimeout, TooLarge, UnsupportedMediaType

MAX_DEPTH = 32


def text(value: object, name: str, *, max_bytes: int = 1024) -> str:
    """``value`` as usable text: a non-empty string, valid UTF-8, at most ``max_bytes``."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string.")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"'{name}' is not valid UTF-8 text.") from None
    if size > max_bytes:
        raise BadRequest(f"'{name}' is {size} bytes; the limit is {max_bytes}.")
    return value


def _check_tree(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"The body nests deeper than {MAX_DEPTH} levels.")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("The body holds text that is not valid UTF-8.") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1)
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


async def json_body(request: Request, *, max_bytes: int, within: float) -> dict[str, Any]:
    """The request's body as a JSON object, or a typed 4xx error."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType("The body must be JSON (Content-Type: application/json).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"the body is over {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"the body is over {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {within:g} s") from None
    except ClientDisconnect:  # the client gave up: nothing to answer, nothing to log
        raise BadRequest("the client closed the connection before its body arrived") from None
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    _check_tree(body)
    return body
