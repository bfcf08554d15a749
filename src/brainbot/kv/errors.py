"""Every error the KV namespace layer raises, in one tree.

Callers catch the branch they can act on; the leaves say exactly what went wrong.
Each class carries the HTTP status and Cloudflare error code it stands for, so the
local API server answers with Cloudflare's status and code, and the REST client turns
Cloudflare's answer back into the same class: one table, both directions.

    KVError
    ├── KVValidationError        bad input, raised before any I/O; nothing was changed
    │   ├── InvalidKey              empty, ".", "..", not UTF-8, or not a str
    │   │   └── KeyTooLong          over 512 UTF-8 bytes
    │   ├── InvalidValue            not bytes/str
    │   │   └── ValueTooLarge       over 25 MiB
    │   ├── InvalidMetadata         not JSON-serialisable
    │   │   └── MetadataTooLarge    over 1,024 bytes of JSON
    │   ├── InvalidExpiration       absolute expiry not >= 60 s ahead, or both kinds given
    │   ├── InvalidExpirationTTL    relative expiry under 60 s
    │   ├── InvalidListLimit        list limit outside 10..1000
    │   ├── InvalidCursor           a cursor this namespace did not hand out
    │   └── BulkTooLarge            one bulk request over its count or byte limit
    ├── KVRemoteError            the service answered with an error
    │   ├── AuthenticationError     token missing, wrong or lacking permission
    │   ├── NamespaceNotFound       account or namespace id unknown
    │   ├── RateLimited             429 (per-key write limit or the API budget); .retry_after
    │   └── ServerError             5xx
    └── KVTransportError         no answer: timeout, refused connection, broken stream

``KVValidationError`` is also a ``ValueError`` so generic input handling still works.
Error texts never contain credentials: only status, Cloudflare code and message.
"""

from __future__ import annotations

from typing import ClassVar


class KVError(Exception):
    """Root of every error raised by the KV namespace layer."""

    http_status: ClassVar[int] = 500
    cf_code: ClassVar[int] = 10001

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KVValidationError(KVError, ValueError):
    """The input breaks one of KV's rules; raised before anything was sent or written."""

    http_status = 400
    cf_code = 10001


class InvalidKey(KVValidationError):
    cf_code = 10042


class KeyTooLong(InvalidKey):
    http_status = 414
    cf_code = 10042


class InvalidValue(KVValidationError):
    cf_code = 10001


class ValueTooLarge(InvalidValue):
    http_status = 413
    cf_code = 10046


class InvalidMetadata(KVValidationError):
    cf_code = 10047


class MetadataTooLarge(InvalidMetadata):
    http_status = 413
    cf_code = 10047


class InvalidExpiration(KVValidationError):
    cf_code = 10033


class InvalidExpirationTTL(KVValidationError):
    cf_code = 10034


class InvalidListLimit(KVValidationError):
    cf_code = 10026


class InvalidCursor(KVValidationError):
    cf_code = 10041


class BulkTooLarge(KVValidationError):
    http_status = 413
    cf_code = 10045


class KVRemoteError(KVError):
    """The service answered, with an error."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status if status is not None else self.http_status
        self.code = code if code is not None else self.cf_code

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status}, code {self.code})"


class AuthenticationError(KVRemoteError):
    http_status = 401
    cf_code = 10000


class NamespaceNotFound(KVRemoteError):
    http_status = 404
    cf_code = 10013


class RateLimited(KVRemoteError):
    """429: either one key written faster than once a second, or the account's API budget."""

    http_status = 429
    cf_code = 971

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ServerError(KVRemoteError):
    http_status = 500
    cf_code = 10001


class KVTransportError(KVError):
    """No usable answer arrived: timeout, refused connection, reset stream."""


# Cloudflare code -> class, for turning an error envelope back into the same typed error.
_BY_CODE: dict[int, type[KVError]] = {
    10000: AuthenticationError,
    10001: ServerError,
    10013: NamespaceNotFound,
    10026: InvalidListLimit,
    10033: InvalidExpiration,
    10034: InvalidExpirationTTL,
    10037: AuthenticationError,
    10041: InvalidCursor,
    10042: InvalidKey,
    10045: BulkTooLarge,
    10046: ValueTooLarge,
    10047: InvalidMetadata,
    971: RateLimited,
}


def error_from_response(status: int, code: int | None, message: str) -> KVError:
    """Build the typed error for a Cloudflare error answer (status, first error code, text)."""
    if status == 429:
        return RateLimited(message, status=status, code=code)
    if status >= 500:
        return ServerError(message, status=status, code=code)
    if status in (401, 403):
        return AuthenticationError(message, status=status, code=code)
    cls: type[KVError] | None
    if status == 414:
        cls = KeyTooLong
    elif status == 413:  # the code varies; the text says what was too large
        lowered = message.lower()
        cls = (
            MetadataTooLarge
            if "metadata" in lowered
            else ValueTooLarge
            if "value length" in lowered
            else BulkTooLarge
        )
    else:
        cls = _BY_CODE.get(code) if code is not None else None
        if cls is not None and issubclass(cls, ServerError):
            cls = None
    if cls is None:
        return KVRemoteError(message, status=status, code=code)
    if issubclass(cls, KVRemoteError):
        return cls(message, status=status, code=code)
    return cls(message)
