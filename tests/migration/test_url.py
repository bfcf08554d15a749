"""``SourceURL``: the migration's Redis URL validated, redacted from its parsed form, and
split into what redis-py needs, with the password apart from everything shown."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url

from brainbot.errors import InvalidInput
from brainbot.migration.url import SourceURL


def test_a_plain_url() -> None:
    url = SourceURL.parse("redis://127.0.0.1:6379/3")
    assert (url.scheme, url.host, url.port, url.db) == ("redis", "127.0.0.1", 6379, 3)
    assert (url.username, url.password, url.has_password_in_url) == (None, None, False)
    assert url.redacted == str(url) == "redis://127.0.0.1:6379/3"
    assert url.client_kwargs() == {"url": "redis://127.0.0.1:6379/3"}


@pytest.mark.parametrize(
    ("text", "redacted", "username", "password"),
    [
        # a userinfo without ':': Redis's password-only form (AUTH pw)
        ("redis://s3cr3t@host", "redis://***@host", None, "s3cr3t"),
        ("redis://user:s3cr3t@host", "redis://user:***@host", "user", "s3cr3t"),
        ("rediss://:s3cr3t@host:6380/2", "rediss://:***@host:6380/2", None, "s3cr3t"),
        ("redis://default:s3cr3t@host/0", "redis://default:***@host/0", "default", "s3cr3t"),
        ("redis://host/0?password=s3cr3t", "redis://host/0?password=***", None, "s3cr3t"),
        # percent-encoded (and '+' in a query value is a space, as redis-py reads it)
        ("redis://:s3cr3t%40%3A%2F%23x@host/0", "redis://:***@host/0", None, "s3cr3t@:/#x"),
        ("redis://s3cr3t%25x@host", "redis://***@host", None, "s3cr3t%x"),
        ("redis://host?password=s3cr3t%26x+y", "redis://host?password=***", None, "s3cr3t&x y"),
        # an unencoded '@' in the password: the last '@' ends the userinfo
        ("redis://:s3cr3t@x@host/1", "redis://:***@host/1", None, "s3cr3t@x"),
        # the userinfo wins over ?password= (as in redis-py); both are hidden
        (
            "redis://:s3cr3t@host/0?password=s3cr3t-too&socket_timeout=3",
            "redis://:***@host/0?password=***&socket_timeout=3",
            None,
            "s3cr3t",
        ),
        # other secrets in the query: hidden too, other options kept as written
        (
            "rediss://host:6380?ssl_password=s3cr3t&ssl_cert_reqs=none",
            "rediss://host:6380?ssl_password=***&ssl_cert_reqs=none",
            None,
            None,
        ),
        (
            "redis://[::1]:6379/1?password=s3cr3t",
            "redis://[::1]:6379/1?password=***",
            None,
            "s3cr3t",
        ),
    ],
)
def test_every_password_form_is_redacted(
    text: str, redacted: str, username: str | None, password: str | None
) -> None:
    url = SourceURL.parse(text)
    assert url.redacted == redacted
    assert (url.username, url.password) == (username, password)
    assert url.has_password_in_url
    for shown in (url.redacted, str(url), repr(url), f"{url}"):
        assert "s3cr3t" not in shown


def test_a_user_name_without_a_password_is_not_a_secret() -> None:
    url = SourceURL.parse("redis://reader:@host/0")
    assert (url.username, url.password, url.has_password_in_url) == ("reader", None, False)
    assert url.redacted == "redis://reader:@host/0"
    assert url.client_kwargs() == {"url": "redis://host/0", "username": "reader"}


async def test_client_kwargs_carry_the_credentials_apart_from_the_url() -> None:
    url = SourceURL.parse("rediss://user:p%40ss@host:6380/2?password=other&socket_timeout=3")
    kwargs = url.client_kwargs()
    assert kwargs == {
        "url": "rediss://host:6380/2?socket_timeout=3",
        "username": "user",
        "password": "p@ss",
    }
    assert "username" not in parse_url(kwargs["url"])
    assert "password" not in parse_url(kwargs["url"])
    options = _pool_options(await _client(kwargs))
    assert (
        options.items()
        >= {
            "host": "host",
            "port": 6380,
            "db": 2,
            "username": "user",
            "password": "p@ss",
            "socket_timeout": 3.0,
        }.items()
    )


async def test_a_bare_userinfo_is_sent_as_the_password() -> None:
    """redis-py alone takes ``redis://pw@host`` as a user name with an empty password
    (AUTH pw ""), which no password-only Redis accepts; here it is the password (AUTH pw)."""
    alone = await _client({"url": "redis://s3cr3t@host"})
    assert _pool_options(alone).get("username") == "s3cr3t"
    assert not _pool_options(alone).get("password")
    ours = await _client(SourceURL.parse("redis://s3cr3t@host").client_kwargs())
    assert _pool_options(ours).get("password") == "s3cr3t"
    assert _pool_options(ours).get("username") is None


@pytest.mark.parametrize(
    "text",
    [
        "redis://:url-pw@host/0",
        "redis://url-pw@host/0",
        "redis://host/0?password=url-pw",
        "redis://host/0",
    ],
)
async def test_the_password_argument_wins(text: str) -> None:
    url = SourceURL.parse(text, password="arg-pw")
    assert url.password == "arg-pw"
    assert url.client_kwargs()["password"] == "arg-pw"
    assert _pool_options(await _client(url.client_kwargs()))["password"] == "arg-pw"
    assert url.has_password_in_url == ("url-pw" in text)
    assert "url-pw" not in url.redacted
    assert "arg-pw" not in url.redacted + repr(url)


def test_an_empty_password_argument_is_none_given() -> None:
    assert SourceURL.parse("redis://:url-pw@host", password="").password == "url-pw"
    assert SourceURL.parse("redis://host", password="").client_kwargs() == {"url": "redis://host"}


@pytest.mark.parametrize(
    ("text", "db"),
    [
        ("redis://host", 0),
        ("redis://host/", 0),
        ("redis://host/0", 0),
        ("redis://host/15", 15),
        ("redis://host?db=4", 4),
        ("redis://host/4?db=4", 4),
    ],
)
def test_database_numbers(text: str, db: int) -> None:
    assert SourceURL.parse(text).db == db


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("redis://:s3cr3t@host/notanint", "database"),
        ("redis://:s3cr3t@host/-1", "database"),
        ("redis://:s3cr3t@host/1/2", "database"),
        ("redis://:s3cr3t@host/0/", "database"),
        ("redis://:s3cr3t@host/ 1", "database"),
        ("redis://:s3cr3t@host/%31", "database"),
        ("redis://:s3cr3t@host/٣", "database"),  # a digit, not an ASCII one
        ("redis://:s3cr3t@host/0?db=x", "database"),
        ("redis://:s3cr3t@host/0?db=", "database"),
        ("redis://:s3cr3t@host?db=-1", "database"),
        ("redis://:s3cr3t@host/0?db=1", "two different databases"),
        # an unencoded '/' in a password: what follows would be read as the database
        ("redis://s3/cr3t@host/0", "database"),
        ("http://:s3cr3t@host/0", "redis:// or rediss://"),
        ("unix://:s3cr3t@/tmp/redis.sock", "redis:// or rediss://"),
        ("127.0.0.1:6379", "redis:// or rediss://"),
        ("redis://:s3cr3t@/0", "no host"),
        ("redis://:s3cr3t@host:port/0", "port"),
        ("redis://:s3cr3t@host:70000/0", "port"),
        ("redis://:s3cr3t@host:0/0", "port"),
        ("redis://:s3/cr3t@host/0", "port"),  # ':s3' is read as host ':' port
        ("redis://:s3cr#3t@host/0", "fragment"),
        ("redis://host/0#", "fragment"),
        ("redis://host/0?auth=s3cr3t", "not a Redis option"),
        ("redis://host/0?token=s3cr3t", "not a Redis option"),
        ("redis://host/0?pass=s3cr3t", "not a Redis option"),
        ("redis://host/0?Password=s3cr3t", "not a Redis option"),
        ("redis://host/0?password=s3cr3t&password=s3cr3t2", "twice"),
        ("redis://[::1/0?password=s3cr3t", "cannot be parsed"),
    ],
)
def test_invalid_urls_are_refused_without_repeating_them(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        SourceURL.parse(text)
    assert "s3" not in str(refused.value)
    assert "cr3t" not in str(refused.value)
    assert refused.value.__cause__ is None  # no chained exception quoting the URL


async def _client(kwargs: dict[str, str]) -> Any:
    """A redis-py client built as ``source.connect()`` builds it (nothing is connected)."""
    client = aioredis.Redis.from_url(**kwargs, decode_responses=False)
    await client.aclose()
    return client


def _pool_options(client: Any) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)
