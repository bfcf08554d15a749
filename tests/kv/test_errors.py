"""One error table, both directions: what the local server answers for a typed error, the
REST client turns back into the same type."""

from __future__ import annotations

import pytest

from brainbot.kv import errors
from brainbot.kv.errors import error_from_response
from brainbot.kv.limits import (
    absolute_expiration,
    key_bytes,
    list_limit,
    metadata_json,
    value_bytes,
)


def raised(fn, *args, **kwargs) -> errors.KVError:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.KVError) as caught:
        fn(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    "error",
    [
        raised(key_bytes, "k" * 513),
        raised(key_bytes, ".."),
        raised(value_bytes, b"\0" * (25 * 1024 * 1024 + 1)),
        raised(metadata_json, {"p": "x" * 2000}),
        raised(metadata_json, {1, 2}),
        raised(absolute_expiration, expiration_ttl=59, now=0),
        raised(absolute_expiration, expiration=10, now=100),
        raised(list_limit, 1001),
    ],
    ids=lambda e: type(e).__name__,
)
def test_validation_errors_round_trip_through_status_and_code(error: errors.KVError) -> None:
    back = error_from_response(error.http_status, error.cf_code, error.message)
    assert type(back) is type(error)
    assert back.message == error.message


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, 971, errors.RateLimited),
        (429, 10048, errors.RateLimited),
        (500, 10001, errors.ServerError),
        (503, None, errors.ServerError),
        (401, 10000, errors.AuthenticationError),
        (403, 10037, errors.AuthenticationError),
        (404, 10013, errors.NamespaceNotFound),
        (413, 10001, errors.ValueTooLarge),  # Miniflare's code for an oversize value
        (400, 10001, errors.KVRemoteError),  # a 4xx is never mistaken for a server error
        (400, 7000, errors.KVRemoteError),
    ],
)
def test_remote_answers_map_to_their_branch(status: int, code: int | None, expected: type) -> None:
    message = "Value length of 26214401 exceeds limit of 26214400." if status == 413 else "x"
    error = error_from_response(status, code, message)
    assert type(error) is expected


def test_every_error_is_a_kv_error_and_validation_errors_are_value_errors() -> None:
    assert issubclass(errors.KeyTooLong, errors.InvalidKey)
    assert issubclass(errors.InvalidKey, ValueError)
    assert not issubclass(errors.ServerError, ValueError)
    assert str(errors.RateLimited("slow", retry_after=3.0)) == "slow (HTTP 429, code 971)"
