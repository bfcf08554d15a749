"""The KV namespace layer: one interface, three ways to reach a namespace.

* :class:`EmbeddedKV` - SQLite on this machine, the default with no Cloudflare account;
* :class:`CloudflareKV` - Cloudflare's REST API (or ``brainbot kv serve``, or Miniflare);
* :func:`open_namespace` - picks one from the settings.
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
    KVTransportError,
    KVValidationError,
    MetadataTooLarge,
    NamespaceNotFound,
    RateLimited,
    ServerError,
    ValueTooLarge,
)
from brainbot.kv.factory import open_namespace
from brainbot.kv.gateway import GatewayKV
from brainbot.kv.namespace import (
    BulkResult,
    Entry,
    KeyInfo,
    KVNamespace,
    ListPage,
    PutItem,
    iter_keys,
)
from brainbot.kv.rest import CloudflareKV, RetryPolicy

__all__ = [
    "AuthenticationError",
    "BulkResult",
    "BulkTooLarge",
    "CloudflareKV",
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
    "KVTransportError",
    "KVValidationError",
    "KeyInfo",
    "KeyTooLong",
    "ListPage",
    "MetadataTooLarge",
    "NamespaceNotFound",
    "PutItem",
    "RateLimited",
    "RequestBudget",
    "RetryPolicy",
    "ServerError",
    "ValueTooLarge",
    "iter_keys",
    "open_namespace",
]
