"""The migration's Redis URL (``--source``, ``--restore-to``): validated, redacted, split
into what redis-py needs, with the password kept apart from everything that is shown.

The interface, for whoever opens a Redis connection from a URL (``source.connect()``)::

    url = SourceURL.parse(text, password=explicit_password_or_None)  # InvalidInput if bad
    client = redis.asyncio.Redis.from_url(**url.client_kwargs(), decode_responses=False)
    log(url.redacted)              # or str(url): every password form replaced by ***
    url.has_password_in_url        # True: the text itself holds a secret (visible in ps)

``SourceURL.parse`` raises :class:`brainbot.errors.InvalidInput`, before any connection,
for: a scheme other than ``redis``/``rediss``; no host; a port that is not 1..65535; a
database (the path ``/N`` or ``?db=N``) that is not a non-negative integer, or both given
and different; a ``#`` fragment (an unencoded ``#`` in a password ends the URL there); a
query parameter given twice; the query parameters ``pass``, ``auth`` or ``token`` (redis-py
does not send them as a password; it would fail later, at connection time). No message
repeats any part of the URL, so none can carry the password.

**Passwords.** The URL may carry one as ``redis://user:PW@host``, ``redis://:PW@host``,
``redis://PW@host`` (a userinfo without ``:``: Redis's password-only ``AUTH PW``) or
``?password=PW``; percent-encoded as in any URL. redis-py alone would take the bare
userinfo as a *user name* with an empty password (``AUTH PW ""``); here it is the password,
as the Redis URL form means it. With several forms, the userinfo's password wins over
``?password=`` (as in redis-py), and the ``password`` argument of ``parse`` (from an
environment variable or a file: it never appears in ``ps``) wins over both.

**Redaction** works on the parsed URL: the userinfo's password (or the whole bare userinfo)
and the value of every query parameter whose name contains ``pass``, ``auth``, ``token`` or
``secret`` (``password``, ``ssl_password``, ...) become ``***``; user names stay.

**client_kwargs()** returns a ``ClientKwargs`` dict, ``{"url": ..., "username": ...,
"password": ...}`` (the last two only when set): ``url`` is the URL without any credential
(no userinfo, no ``password``/``username`` query parameters), keeping the host, port,
database and every other query option for redis-py's own parsing; the credentials go as
keyword arguments, which ``Redis.from_url`` keeps because the URL no longer has any of its
own. Add the caller's options (``decode_responses``, ``ssl_ca_certs``, timeouts...) next to
them; note that redis-py lets a query option of the URL (e.g. ``?socket_timeout=``) win
over a keyword argument of the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NotRequired, TypedDict
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from brainbot.errors import InvalidInput

SCHEMES = ("redis", "rediss")
SECRET_PARAMETER_PARTS = ("pass", "auth", "token", "secret")
"""A query parameter whose (lower-case) name contains one of these is redacted."""
REFUSED_PARAMETERS = ("pass", "auth", "token")
"""Password-looking query parameters redis-py does not understand: refused, not ignored."""
REDACTED = "***"
_DIGITS = re.compile(r"[0-9]+")


class ClientKwargs(TypedDict):
    """What ``SourceURL.client_kwargs()`` returns, for ``Redis.from_url(**kwargs, ...)``."""

    url: str
    """The URL without any credential."""
    username: NotRequired[str]
    password: NotRequired[str]


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SECRET_PARAMETER_PARTS)


def _database(text: str, where: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise InvalidInput(
            f"The source URL's database ({where}) must be a non-negative integer, "
            "as in redis://host:6379/0."
        )
    return int(text)


@dataclass(frozen=True, slots=True, repr=False)
class SourceURL:
    """A validated ``redis://`` or ``rediss://`` URL; build it with :meth:`parse`.

    ``password`` is the one to send: the ``parse`` argument's if given, else the URL's. It is
    kept out of ``repr()`` and ``str()``, which show :attr:`redacted`.
    """

    scheme: str
    host: str
    port: int | None
    """``None``: Redis's default port (6379)."""
    db: int
    username: str | None
    password: str | None
    has_password_in_url: bool
    """The URL text itself holds a secret (a password, or any value :attr:`redacted`
    hides): it is visible to every local user in the process list while on a command line."""
    _hostport: str
    _userinfo_kind: str  # "" none, "bare" (a password alone), "pair" (user:password)
    _userinfo_user: str  # the user name as written (percent-encoded), for "pair"
    _userinfo_secret: bool  # "pair" with a non-empty password
    _path: str
    _query: tuple[tuple[str, str, str], ...]  # (raw piece, decoded name, decoded value)

    @classmethod
    def parse(cls, url: str, *, password: str | None = None) -> SourceURL:
        """Validate ``url``; ``password`` (``None`` or ``""``: none given) wins over any
        password the URL holds. Raises ``InvalidInput`` (naming no part of the URL)."""
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unbalanced "[" in the host
            raise InvalidInput("The source URL cannot be parsed.") from None
        if parts.scheme not in SCHEMES:
            scheme = parts.scheme if re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme) else ""
            raise InvalidInput(
                f"The source must be a redis:// or rediss:// URL, not {scheme or 'none'}://."
            )
        if parts.fragment or url.endswith("#"):
            raise InvalidInput(
                "The source URL has a '#' fragment; percent-encode '#' in a password as %23."
            )
        try:
            port = parts.port
        except ValueError:
            raise InvalidInput("The source URL's port must be a number from 1 to 65535.") from None
        if port == 0:
            raise InvalidInput("The source URL's port must be a number from 1 to 65535.")
        host = parts.hostname
        if not host:
            raise InvalidInput("The source URL names no host, as in redis://host:6379/0.")

        userinfo, at, hostport = parts.netloc.rpartition("@")
        username: str | None = None
        url_password: str | None = None
        kind, user_raw, pair_secret = "", "", False
        if at and userinfo:
            if ":" in userinfo:
                user_raw, _, secret = userinfo.partition(":")
                kind, pair_secret = "pair", bool(secret)
                username = unquote(user_raw) or None
                url_password = unquote(secret) or None
            else:
                kind = "bare"
                url_password = unquote(userinfo)

        query: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for piece in parts.query.split("&") if parts.query else []:
            raw_name, _, raw_value = piece.partition("=")
            name, value = unquote_plus(raw_name), unquote_plus(raw_value)
            if not name:
                continue
            if name in seen:
                raise InvalidInput(f"The source URL gives the query parameter {name!r} twice.")
            seen.add(name)
            lowered = name.lower()
            if lowered in REFUSED_PARAMETERS or (lowered == "password" and name != "password"):
                raise InvalidInput(
                    f"The source URL's query parameter {name!r} is not a Redis option; give "
                    "the password as ?password=, redis://:PASSWORD@host, or outside the URL."
                )
            query.append((piece, name, value))
        options = {name: value for _, name, value in query}

        db = 0
        if parts.path not in ("", "/"):
            db = _database(parts.path[1:], "the path")
        if "db" in options:
            from_query = _database(options["db"], "?db=")
            if parts.path not in ("", "/") and from_query != db:
                raise InvalidInput(
                    "The source URL names two different databases (the path and ?db=)."
                )
            db = from_query
        if username is None and options.get("username"):
            username = options["username"]
        if url_password is None and options.get("password"):
            url_password = options["password"]

        in_url = (
            kind == "bare"
            or pair_secret
            or any(_is_secret(name) and value for _, name, value in query)
        )
        return cls(
            scheme=parts.scheme,
            host=host,
            port=port,
            db=db,
            username=username,
            password=password or url_password,
            has_password_in_url=in_url,
            _hostport=hostport,
            _userinfo_kind=kind,
            _userinfo_user=user_raw,
            _userinfo_secret=pair_secret,
            _path=parts.path,
            _query=tuple(query),
        )

    @property
    def redacted(self) -> str:
        """The URL with every password form replaced by ``***``, for logs, reports and
        checkpoints (stable for one URL whatever its password, so fit for fingerprints)."""
        if self._userinfo_kind == "bare":
            userinfo = f"{REDACTED}@"
        elif self._userinfo_kind == "pair":
            secret = REDACTED if self._userinfo_secret else ""
            userinfo = f"{self._userinfo_user}:{secret}@"
        else:
            userinfo = ""
        pieces = [
            f"{quote(name, safe='')}={REDACTED}" if _is_secret(name) and value else piece
            for piece, name, value in self._query
        ]
        query = "?" + "&".join(pieces) if pieces else ""
        return f"{self.scheme}://{userinfo}{self._hostport}{self._path}{query}"

    def client_kwargs(self) -> ClientKwargs:
        """Keyword arguments for ``redis.asyncio.Redis.from_url(**kwargs, ...)``: ``url``
        without any credential, and ``username``/``password`` when there are some."""
        pieces = [piece for piece, name, _ in self._query if name not in ("password", "username")]
        query = "?" + "&".join(pieces) if pieces else ""
        kwargs: ClientKwargs = {"url": f"{self.scheme}://{self._hostport}{self._path}{query}"}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    def __repr__(self) -> str:
        return f"SourceURL({self.redacted!r})"

    def __str__(self) -> str:
        return self.redacted
