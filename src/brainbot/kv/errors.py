"""The KV namespace layer's errors, and the one table between them and Cloudflare's answers.

The classes live in :mod:`brainbot.errors`, where the whole tree is drawn; they are
re-exported here for the KV layer. Each carries the HTTP status and Cloudflare error code
it stands for: the local API server answers with them, and :func:`error_from_response`
turns Cloudflare's answer back into the same class. One table, both directions.
"""

from __future__ import annotations

from brainbot.errors import (
    AnswerTooLarge,
    AuthenticationError,
    BulkTooLarge,
    InvalidCursor,
    InvalidExpiration,
    InvalidExpirationTTL,
    InvalidKey,
    InvalidListLimit,
    InvalidMetadata,
    InvalidValue,
    KeyTooLong,
    KVError,
    KVRemoteError,
    KVStorageError,
    KVTransportError,
    KVValidationError,
    MetadataTooLarge,
    NamespaceNotFound,
    RateLimited,
    ServerError,
    ValueTooLarge,
)

__all__ = [
    "AnswerTooLarge",
    "AuthenticationError",
    "BulkTooLarge",
    "InvalidCursor",
    "InvalidExpiration",
    "InvalidExpirationTTL",
    "InvalidKey",
    "InvalidListLimit",
    "InvalidMetadata",
    "InvalidValue",
    "KVError",
    "KVRemoteError",
    "KVStorageError",
    "KVTransportError",
    "KVValidationError",
    "KeyTooLong",
    "MetadataTooLarge",
    "NamespaceNotFound",
    "RateLimited",
    "ServerError",
    "ValueTooLarge",
    "error_from_response",
]

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
