"""Who a user is: signed identity tokens from the front end, checked with PyJWT.

``brainbot serve`` never takes a user name from a request. A session is issued only for a
JSON Web Token signed by the front end (or the chat platform) that the user logged in to:

* **HS256** with a shared secret (``BRAINBOT_AUTH_JWT_SECRET``, at least 32 bytes), or
* **RS256 / ES256 / EdDSA** with the front end's public key (``BRAINBOT_AUTH_PUBLIC_KEY_FILE``,
  PEM) or its key set (``BRAINBOT_AUTH_JWKS_FILE``; tokens name their key with ``kid``).

The token must carry ``sub`` (the user), ``exp`` (it expires) and ``aud`` (this service,
``BRAINBOT_AUTH_AUDIENCE``, default ``brainbot``), and ``iss`` when an issuer is configured.
Subjects listed in ``BRAINBOT_OPERATORS`` are operators: they may reach every conversation,
including migrated ones whose owner is unknown.

With none of the three configured, a random secret is kept in ``<data dir>/auth-secret``
(created 0600): ``brainbot auth token --user alice`` mints tokens with it for local use, the
demo and the tests. Why PyJWT: a well-kept library does the algorithm checks, the key
handling and the claim validation that a hand-written verifier gets wrong.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from brainbot.errors import ConfigError, Unauthenticated

MIN_SECRET_BYTES = 32
MAX_TOKEN_BYTES = 8192
MAX_SUBJECT_BYTES = 256


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified user: the token's ``sub``, and whether it is an operator."""

    user: str
    operator: bool = False


def local_secret(path: Path) -> str:
    """The secret in ``path``, created (exclusively, 0600) with 256 random bits if missing.
    A file that others may read is refused: it would let them mint any identity."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        refused = ConfigError(
            f"{path} must be a regular file (not a symlink) only its owner can read (chmod 600)."
        )
        try:  # opened without following a symlink, checked on what was opened
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) as existing:
                if not stat.S_ISREG(os.fstat(existing.fileno()).st_mode):
                    raise refused from None
                if os.fstat(existing.fileno()).st_mode & 0o077:
                    raise refused from None
                return existing.read().strip()
        except OSError:  # ELOOP: a symlink
            raise refused from None
    with os.fdopen(fd, "w") as out:
        secret = secrets.token_urlsafe(32)
        out.write(secret + "\n")
    return secret


class IdentityVerifier:
    """Checks identity tokens: signature, algorithm, ``exp``, ``aud``, ``sub`` (and ``iss``)."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        jwks: str | None = None,
        audience: str = "brainbot",
        issuer: str | None = None,
        operators: frozenset[str] = frozenset(),
        leeway: float = 30.0,
    ) -> None:
        given = [x for x in (secret, public_key, jwks) if x]
        if len(given) != 1:
            raise ConfigError(
                "Identity needs exactly one of BRAINBOT_AUTH_JWT_SECRET, "
                "BRAINBOT_AUTH_PUBLIC_KEY_FILE, BRAINBOT_AUTH_JWKS_FILE."
            )
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"BRAINBOT_AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes."
            )
        self.audience = audience
        self.issuer = issuer
        self.operators = operators
        self.leeway = leeway
        self.__secret = secret
        # kid -> (key, the one algorithm it verifies): a token cannot pick another algorithm
        # for a key (no HS256 with a public key, no "none", no curve mix-ups)
        self._keys: dict[str | None, tuple[Any, str]] = {}
        if public_key is not None:
            try:
                key = _load_public_key(public_key)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"The identity public key cannot be read: {exc}") from None
            self._keys[None] = (key, _algorithm_of(key))
        if jwks is not None:
            try:
                for jwk in jwt.PyJWKSet.from_json(jwks).keys:
                    self._keys[jwk.key_id] = (jwk.key, jwk.algorithm_name)
            except (jwt.PyJWKError, jwt.PyJWKSetError, ValueError) as exc:
                raise ConfigError(f"The identity JWKS cannot be read: {exc}") from None
            if not self._keys:
                raise ConfigError("The identity JWKS holds no usable key.")

    def __repr__(self) -> str:
        kind = "HS256" if self.__secret is not None else "public key"
        return f"IdentityVerifier({kind}, audience={self.audience!r})"

    def verify(self, token: str) -> Identity:
        """The identity in ``token``, or ``Unauthenticated`` saying what is wrong (never
        echoing the token)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("an identity token is required")
        try:
            header = jwt.get_unverified_header(token)
            if self.__secret is not None:
                key: Any = self.__secret
                algorithms = ["HS256"]
            else:
                kid = header.get("kid")
                found = self._keys.get(kid if isinstance(kid, str) else None)
                if found is None:
                    raise Unauthenticated("the identity token names an unknown key")
                key, algorithm = found
                algorithms = [algorithm]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the identity token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the identity token is for another audience") from None
        except (jwt.PyJWTError, ValueError, TypeError):  # InvalidKeyError included
            raise Unauthenticated("the identity token is not valid") from None
        subject = claims.get("sub")
        if not _good_subject(subject):
            raise Unauthenticated("the identity token's subject is not usable")
        assert isinstance(subject, str)
        return Identity(subject, subject in self.operators)


def _good_subject(subject: object) -> bool:
    if not isinstance(subject, str) or not subject.strip():
        return False
    try:
        return len(subject.encode("utf-8")) <= MAX_SUBJECT_BYTES and subject.isprintable()
    except UnicodeEncodeError:
        return False


def _load_public_key(pem: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem.encode())


def _algorithm_of(key: Any) -> str:
    """The one algorithm a PEM public key verifies (RSA: RS256; EC: by its curve)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise ConfigError("The identity public key is of a kind brainbot does not verify.")


def mint(
    secret: str,
    user: str,
    *,
    audience: str = "brainbot",
    ttl: float = 3600.0,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 identity token for ``user`` (``brainbot auth token``: local use, demo, tests)."""
    if not _good_subject(user):
        raise ConfigError("The user must be printable text of 1..256 bytes.")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": user,
        "aud": audience,
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def jwks_text(path: Path) -> str:
    text = path.read_text()
    json.loads(text)  # a clear error for a file that is not JSON at all
    return text
