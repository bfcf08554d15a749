"""Every error brainbot raises, in one tree with one root.

Callers catch the branch they can act on: ``InvalidInput`` (fix the input; nothing was
changed), ``Unavailable`` (the backend did not answer usably; retry later), ``NotFound``,
``Unauthenticated``. The leaves say exactly what went wrong. Errors of the libraries
underneath (sqlite3, httpx, redis-py's connection errors) are translated where they enter:
in the embedded KV, the REST and gateway clients, the Redis backend and the migration's
Redis source. ::

    BrainbotError
    ├── InvalidInput (ValueError)          the caller's input or settings; nothing was changed
    │   ├── ConfigError                      settings incomplete or contradictory
    │   ├── KVValidationError (KVError)      breaks one of KV's rules; raised before any I/O
    │   │   ├── InvalidKey                     empty, ".", "..", not UTF-8, or not a str
    │   │   │   └── KeyTooLong                 over 512 UTF-8 bytes
    │   │   ├── InvalidValue                   not bytes/str
    │   │   │   └── ValueTooLarge              over 25 MiB
    │   │   ├── InvalidMetadata                not JSON-serialisable
    │   │   │   └── MetadataTooLarge           over 1,024 bytes of JSON
    │   │   ├── InvalidExpiration              absolute expiry not >= 60 s ahead, or both kinds
    │   │   ├── InvalidExpirationTTL           relative expiry under 60 s
    │   │   ├── InvalidListLimit               list limit outside 10..1000
    │   │   ├── InvalidCursor                  a cursor this namespace did not hand out
    │   │   └── BulkTooLarge                   one bulk request over its count or byte limit
    │   ├── DataError (StoreError)           a value redis-py refuses to encode (bool, None...)
    │   ├── TTLTooShort (StoreError)         a TTL under KV's 60 s floor with policy "reject"
    │   ├── ConversationError                bad conversation input (role, id, limit...)
    │   ├── SessionError                     a malformed session id or option
    │   ├── RollbackError                    no such migration run, or nothing to do
    │   ├── BadRequest                       a request the service cannot use (not JSON...)
    │   │   ├── UnsupportedMediaType           a body that is not application/json (415)
    │   │   └── RequestTimeout                 a body that did not arrive in time (408)
    │   └── TooLarge                         a request body over the service's limit (413)
    ├── NotFound
    │   └── SessionNotFound (KeyError)       no live session under that id
    ├── Unauthenticated                      no credential, or one that is unknown or expired
    ├── Unavailable                          no usable answer now; retry later
    │   ├── Throttled                        over a rate limit of the service; .retry_after
    │   ├── BudgetExhausted (KVError)        no API budget slot for live traffic in time
    │   ├── KVTransportError (KVError)       timeout, refused connection, broken stream
    │   ├── KVStorageError (KVError)         the embedded KV's database failed (locked, I/O)
    │   ├── RateLimited (KVRemoteError)      429: per-key write limit or the API budget
    │   ├── ServerError (KVRemoteError)      5xx
    │   ├── WriteConflict (KVError)          a transaction lost to other writers too often
    │   ├── RedisUnavailable (StoreError)    Redis refused, timed out or dropped the connection
    │   └── WriteRateExceeded (StoreError)   a key written again within 1 s, policy "error"
    ├── KVError                              any error of the KV namespace layer (also above)
    │   └── KVRemoteError                    the KV service answered with an error
    │       ├── AuthenticationError            token missing, wrong or lacking permission
    │       │   └── ClockSkew                    the gateway refused this machine's clock
    │       ├── NamespaceNotFound              account or namespace id unknown
    │       └── AnswerTooLarge                 an answer longer than any legitimate one
    ├── StoreError                           errors of the Redis-compatible stores (also above)
    │   ├── ResponseError                    what Redis itself answers with an error reply
    │   │   └── WrongTypeError                 "WRONGTYPE Operation against a key holding..."
    │   └── UnsupportedOperation (NotImplementedError)  a Redis option KV cannot honour
    └── MigrationError                       a migration run stopped; ``resume`` continues it

Each KV error carries the HTTP status and Cloudflare error code it stands for, so the local
API server answers with Cloudflare's status and code and the REST client turns Cloudflare's
answer back into the same class (``brainbot.kv.errors.error_from_response``): one table,
both directions. When redis-py is installed, ``ResponseError``, ``DataError`` and
``RedisUnavailable`` also subclass redis-py's classes, so ``except redis.ResponseError`` (or
``DataError``, ``ConnectionError``) in ported code still catches them.

Error texts never contain credentials: only status, codes, messages and key names.
"""

from __future__ import annotations

from typing import ClassVar

try:  # optional: redis-py is only the rollback extra
    from redis.exceptions import ConnectionError as _RedisConnectionError
    from redis.exceptions import DataError as _RedisDataError
    from redis.exceptions import ResponseError as _RedisResponseError
    from redis.exceptions import TimeoutError as _RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra

    class _RedisResponseError(Exception):  # type: ignore[no-redef]
        pass

    class _RedisDataError(Exception):  # type: ignore[no-redef]
        pass

    class _RedisConnectionError(Exception):  # type: ignore[no-redef]
        pass

    class _RedisTimeoutError(Exception):  # type: ignore[no-redef]
        pass


class BrainbotError(Exception):
    """Root of every error brainbot raises."""

    # redis-py's RedisError.__repr__ reads an attribute its __init__ sets, which our classes
    # (subclassing it for ``except redis.DataError`` in ported code) never run
    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


# -- the branches callers act on ---------------------------------------------------


class InvalidInput(BrainbotError, ValueError):
    """The caller's input or configuration is wrong; nothing was changed (HTTP 400)."""


class NotFound(BrainbotError):
    """The thing asked for does not exist (or is not the caller's to see)."""


class Unauthenticated(BrainbotError):
    """No credential, or one that is unknown, expired or forged (HTTP 401)."""


class Unavailable(BrainbotError):
    """The backend gave no usable answer now; retrying later may succeed (HTTP 503)."""


# -- configuration, service ----------------------------------------------------------


class ConfigError(InvalidInput):
    """The configuration is incomplete or contradictory (names the settings, never values)."""


class BadRequest(InvalidInput):
    """A request the service cannot use: not JSON, a field missing or of the wrong kind."""


class UnsupportedMediaType(BadRequest):
    """A body that is not ``application/json`` (HTTP 415)."""


class RequestTimeout(BadRequest):
    """A body that did not arrive in time (HTTP 408)."""


class TooLarge(InvalidInput):
    """A request body over the service's limit (HTTP 413)."""


# -- the KV namespace layer ------------------------------------------------------------


class KVError(BrainbotError):
    """Root of every error raised by the KV namespace layer."""

    http_status: ClassVar[int] = 500
    cf_code: ClassVar[int] = 10001

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KVValidationError(KVError, InvalidInput):
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


class ClockSkew(AuthenticationError):
    """The gateway refused the request's timestamp: this machine's clock is off (NTP?)."""


class NamespaceNotFound(KVRemoteError):
    http_status = 404
    cf_code = 10013


class AnswerTooLarge(KVRemoteError):
    """The service's answer outgrew any legitimate one (a 25 MiB value and its envelope):
    reading stopped. Not retried: the same request would be answered the same way. Raised
    by our client only (no service answers it, so it is not in the wire table)."""

    http_status = 502


class RateLimited(KVRemoteError, Unavailable):
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


class ServerError(KVRemoteError, Unavailable):
    http_status = 500
    cf_code = 10001


class WriteConflict(KVError, Unavailable):
    """A read-modify-write found its keys changed by other writers on every attempt
    (a key far hotter than one coordinator takes): nothing was written; retry later."""

    http_status = 409


class Throttled(Unavailable):
    """Over one of the service's rate limits (HTTP 429); retry after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExhausted(KVError, Unavailable):
    """Live traffic found no slot of the REST API budget within its short wait: fail fast
    (HTTP 503 with ``retry_after``) rather than queue behind a minute of other requests."""

    http_status = 503

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KVTransportError(KVError, Unavailable):
    """No usable answer arrived: timeout, refused connection, reset stream."""


class KVStorageError(KVError, Unavailable):
    """The embedded KV's database failed: locked beyond its busy timeout, I/O, disk full."""

    http_status = 503


# -- the Redis-compatible stores ---------------------------------------------------------


class StoreError(BrainbotError):
    """Root of the errors raised by ``KVStore`` and the other stores of ``open_store()``."""


class ResponseError(StoreError, _RedisResponseError):
    """The answer Redis would give as an error reply; the message is Redis's text."""


class WrongTypeError(ResponseError):
    def __init__(self) -> None:
        super().__init__("WRONGTYPE Operation against a key holding the wrong kind of value")


class DataError(StoreError, InvalidInput, _RedisDataError):
    """A value that cannot be stored (redis-py raises its DataError for the same inputs)."""


class TTLTooShort(StoreError, InvalidInput):
    """A TTL under KV's 60-second floor while ``BRAINBOT_KV_SHORT_TTL=reject``."""


class WriteRateExceeded(StoreError, Unavailable):
    """A second write to one key within a second while ``BRAINBOT_KV_WRITE_RATE=error``."""


class UnsupportedOperation(StoreError, NotImplementedError):
    """A Redis option this store does not implement; the message names it."""


class RedisUnavailable(StoreError, Unavailable, _RedisConnectionError, _RedisTimeoutError):
    """Redis (the rollback backend, the dual shadow, a migration source) could not be
    reached or timed out. Also redis-py's ConnectionError and TimeoutError."""


# -- conversations, sessions, migration ------------------------------------------------------


class ConversationError(InvalidInput):
    """Bad input to the conversation store (unknown role, empty id, bad limit...)."""


class SessionError(InvalidInput):
    """A malformed session id or option; never says whether a session exists."""


class SessionNotFound(NotFound, KeyError):
    """No live session under that id (never existed, expired or deleted)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "no such session"


class MigrationError(BrainbotError):
    """A migration run stopped; its checkpoint lets ``resume=True`` continue where it was."""


class RollbackError(InvalidInput):
    """No such migration run, or nothing to do."""
