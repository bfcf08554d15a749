"""The KV namespace layer: one interface, three ways to reach a namespace.

* :class:`EmbeddedKV` - SQLite on this machine, the default with no Cloudflare account;
* :class:`CloudflareKV` - Cloudflare's REST API (or ``brainbot kv serve``, or Miniflare);
* :class:`GatewayKV` - our gateway Worker, for live traffic;
* :class:`ReadYourWrites` - any of them with this process's recent writes laid over.

Which one a deployment uses is decided by ``brainbot.composition.open_namespace``.
"""

from brainbot.kv.budget import RequestBudget
from brainbot.kv.embedded import EmbeddedKV
from brainbot.kv.errors import (
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
from brainbot.kv.gateway import GatewayKV
from brainbot.kv.namespace import (
    CLOUDFLARE,
    STRONG,
    BulkResult,
    Consistency,
    Entry,
    KeyInfo,
    KVNamespace,
    ListPage,
    PutItem,
    iter_keys,
)
from brainbot.kv.overlay import ListLag, ReadYourWrites
from brainbot.kv.rest import CloudflareKV, RetryPolicy

__all__ = [
    "CLOUDFLARE",
    "STRONG",
    "AuthenticationError",
    "BulkResult",
    "BulkTooLarge",
    "CloudflareKV",
    "Consistency",
    "EmbeddedKV",
    "Entry",
    "GatewayKV",
    "InvalidCursor",
    "InvalidExpiration",
    "InvalidExpirationTTL",
    "InvalidKey",
    "InvalidListLimit",
    "InvalidMetadata",
    "InvalidValue",
    "KVError",
    "KVNamespace",
    "KVRemoteError",
    "KVStorageError",
    "KVTransportError",
    "KVValidationError",
    "KeyInfo",
    "KeyTooLong",
    "ListLag",
    "ListPage",
    "MetadataTooLarge",
    "NamespaceNotFound",
    "PutItem",
    "RateLimited",
    "ReadYourWrites",
    "RequestBudget",
    "RetryPolicy",
    "ServerError",
    "ValueTooLarge",
    "iter_keys",
]
