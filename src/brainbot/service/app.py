"""``brainbot serve``: the chat service, for users who are who they say they are.

    POST   /sessions            Bearer <identity token>        -> 201 {"session", "user", ...}
    DELETE /sessions            Bearer <session>                -> 204 (log out)
    POST   /conversations       Bearer <session>                -> 201 {"conversation": id}
    GET    /conversations?limit=N&after=T                        -> {"conversations", "next_after"}
    POST   /chat                Bearer <session> {"message", "conversation"?}
                                                                -> {"reply", "conversation", ...}
    GET    /conversations/{id}/messages?limit=N&before=T        -> {"messages", "next_before"}
    POST   /conversations/{id}/messages {"content", "metadata"?} -> 201 {"message"}
    DELETE /conversations/{id}                                  -> {"deleted": n}
    GET    /health                                              -> {"ok": true} or 503

* **Identity**: a session is issued only for a signed identity token (``service/auth.py``);
  no user name is ever taken from a request body.
* **Ownership**: conversation ids come from the server; every conversation endpoint and
  ``/chat`` answer 404 for a conversation the caller does not own (the same as a missing
  one). Clients write only ``user`` messages; ``assistant`` ones come from the responder.
  Operators (``BRAINBOT_OPERATORS``) reach every conversation.
* **Limits**: message size, retention per conversation (messages and bytes), a byte budget
  per response, rate limits per identity and per address (429 with ``Retry-After``).
* **No half turns**: a turn is checked whole (the reply too) and written in one request.
* **Errors by branch** of ``brainbot.errors``: bad input 400 (413 too large, 415 not JSON,
  408 too slow), unauthenticated 401, not found 404, throttled 429, unavailable 503 (with
  ``Retry-After`` when known), never a 500 for anything a client sends.

Transport (timeouts, connection limits) is ``serving/transport.py``'s.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from brainbot.errors import (
    BudgetExhausted,
    InvalidInput,
    NotFound,
    RequestTimeout,
    SessionError,
    Throttled,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from brainbot.responder import Responder, load_responder
from brainbot.service import inputs
from brainbot.service.auth import Identity, IdentityVerifier
from brainbot.service.throttle import DEAD, KnownSessions, Throttle, address_key
from brainbot.storage.conversations import ConversationStore, Message
from brainbot.storage.protocol import Store
from brainbot.storage.sessions import Session, SessionStore

Handler = Callable[[Request], Awaitable[Response]]
Charge = Literal["read", "write"]
log = logging.getLogger("brainbot.service")
HEALTH_KEY = "__brainbot_health__"


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    max_message_bytes: int = 32 * 1024
    max_conversation_messages: int = 10_000
    max_conversation_bytes: int = 16 * 1024 * 1024
    max_response_bytes: int = 1024 * 1024
    body_timeout: float = 30.0
    history_window: int = 20
    session_lifetime: int = 3600
    session_max_lifetime: int = 86400
    health_interval: float = 10.0
    """How fresh a storage outcome must be for /health to answer from it, else it probes."""

    @property
    def max_body_bytes(self) -> int:
        """A message at its limit, every character escaped (``\\uXXXX``), plus room."""
        return 6 * self.max_message_bytes + 16 * 1024


def _error(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {} if retry_after is None else {"Retry-After": str(max(1, round(retry_after)))}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


MAX_METADATA_BYTES = 4096


def _query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name) or None
    return None if value is None else inputs.text(value, name, max_bytes=4096)


def _limit(request: Request, *, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= 1000:
        raise InvalidInput("'limit' must be an integer from 1 to 1000.")
    return int(raw)


def _bearer(request: Request, *, required: bool = True) -> str:
    """The request's bearer credential ("" when there is none and none is ``required``)."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        if not required:
            return ""
        raise Unauthenticated("a bearer credential is required")
    return credential.strip()


class ChatService:
    def __init__(
        self,
        store: Store,
        *,
        identity: IdentityVerifier,
        responder: Responder | None = None,
        throttle: Throttle | None = None,
        limits: ServiceLimits | None = None,
        session_key: bytes | None = None,
    ) -> None:
        self.limits = limits or ServiceLimits()
        self.store = store
        self.identity = identity
        self.throttle = throttle or Throttle()
        self.conversations = ConversationStore(
            store,
            max_messages=self.limits.max_conversation_messages,
            max_bytes=self.limits.max_conversation_bytes,
            max_content_bytes=self.limits.max_message_bytes,
        )
        self.sessions = SessionStore(
            store,
            lifetime=self.limits.session_lifetime,
            max_lifetime=self.limits.session_max_lifetime,
            signing_key=session_key,
        )
        self.responder = responder or load_responder(None)
        self.known_sessions = KnownSessions()
        self._outcome: tuple[float, Unavailable | None] = (-float("inf"), None)
        self._probe_key = f"{HEALTH_KEY}/{secrets.token_hex(8)}"  # one per instance

    # -- plumbing ------------------------------------------------------------------------

    def app(self, *, allowed_hosts: list[str] | None = None) -> Starlette:
        def guarded(handler: Handler) -> Handler:
            async def run(request: Request) -> Response:
                try:  # errors are mapped by branch (brainbot.errors draws the tree)
                    return await handler(request)
                except TooLarge as exc:
                    return _error(413, str(exc))
                except UnsupportedMediaType as exc:
                    return _error(415, str(exc))
                except RequestTimeout as exc:
                    return _error(408, str(exc))
                except InvalidInput as exc:
                    return _error(400, str(exc))
                except Unauthenticated as exc:
                    return _error(401, str(exc) or "unknown or expired session")
                except NotFound as exc:
                    return _error(404, str(exc))
                except Throttled as exc:
                    return _error(429, str(exc), exc.retry_after)
                except BudgetExhausted as exc:
                    return _error(503, "storage busy: try again shortly", exc.retry_after)
                except Unavailable as exc:
                    self._outcome = (time.monotonic(), exc)
                    return _error(503, f"storage unavailable: {type(exc).__name__}", 1.0)
                except Exception as exc:  # a bug or a misconfiguration: logged, no traceback out
                    log.error("request failed: %s", type(exc).__name__, exc_info=exc)
                    return _error(500, "internal error")

            return run

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.store.aclose()

        app = Starlette(
            routes=[
                Route("/health", guarded(self.health), methods=["GET"]),
                Route("/sessions", guarded(self.login), methods=["POST"]),
                Route("/sessions", guarded(self.logout), methods=["DELETE"]),
                Route("/chat", guarded(self.chat), methods=["POST"]),
                Route(
                    "/conversations",
                    guarded(self.conversations_endpoint),
                    methods=["GET", "POST"],
                ),
                Route(
                    "/conversations/{cid}/messages", guarded(self.messages), methods=["GET", "POST"]
                ),
                Route(
                    "/conversations/{cid}", guarded(self.delete_conversation), methods=["DELETE"]
                ),
            ],
            lifespan=lifespan,
        )
        if allowed_hosts is not None:
            app.add_middleware(HostCheck, allowed=allowed_hosts)
        return app

    def _address(self, request: Request) -> str | None:
        return address_key(request.client.host if request.client is not None else None)

    async def _authenticated(
        self, request: Request, charge: Charge | None = None
    ) -> tuple[Session, Identity]:
        """The caller's session and identity, the request charged to ``charge``'s limits.
        A session id this service did not issue is refused by its MAC, without a storage
        read; one known to be dead, or whose identity is known to be over its limit, is
        refused without one too (``KnownSessions``). Every failure is charged to the
        address (429 past the limit), a success never is, so a flood from one address
        neither spends the KV budget nor locks out the users behind it."""
        credential = _bearer(request, required=False)
        known = self.known_sessions.owner(credential)
        if known is not None and known != DEAD and charge is not None:
            await self._charge(request, charge, known)  # over the limit: no read
        session = None
        if known != DEAD and credential:
            try:
                session = await self.sessions.get(credential)
            except SessionError:  # not an id of this service: refused without a read
                session = None
        user = None if session is None else session.data.get("user")
        if session is None or not isinstance(user, str):
            if self.sessions.issued_here(credential):  # a genuine id, found dead
                self.known_sessions.remember(credential, DEAD)
            await self.throttle.hit("failed", self._address(request))
            raise Unauthenticated("unknown or expired session")
        self.known_sessions.remember(credential, user)
        if known is None and charge is not None:
            await self._charge(request, charge, user)
        # operator rights are read from the configuration now, not from the session
        return session, Identity(user, user in self.identity.operators)

    async def _charge(self, request: Request, charge: Charge, user: str) -> None:
        await self.throttle.hit(charge, user)
        if charge == "write":
            await self.throttle.hit("write_address", self._address(request))

    async def _body(self, request: Request) -> dict[str, Any]:
        return await inputs.json_body(
            request, max_bytes=self.limits.max_body_bytes, within=self.limits.body_timeout
        )

    async def _owned(self, cid: object, who: Identity) -> str:
        """``cid`` if ``who`` may reach it; the same 404 whether it is someone else's or
        does not exist, so ids of others cannot be probed."""
        conversation = inputs.text(cid, "conversation", max_bytes=128)
        if "/" in conversation:
            raise NotFound("no such conversation")
        if who.operator or await self.conversations.owns(conversation, who.user):
            return conversation
        raise NotFound("no such conversation")

    # -- endpoints -------------------------------------------------------------------------

    def _wrote(self) -> None:
        """A write of real traffic went through: the store takes writes now."""
        self._outcome = (time.monotonic(), None)

    async def health(self, request: Request) -> Response:
        """Whether the store takes writes: the latest outcome of real traffic when it is
        fresher than ``health_interval``, else a probe write of this instance's own key
        (so an idle instance costs one write per interval, a busy one none)."""
        at, failure = self._outcome
        age = time.monotonic() - at
        # a failure of real traffic is checked again at once (at most once a second), so one
        # transient error does not flap a load balancer for a whole interval
        if age >= self.limits.health_interval or (failure is not None and age >= 1.0):
            try:
                await self.store.set(self._probe_key, "ok", ex=60)
                failure = None
            except Unavailable as exc:
                failure = exc
            self._outcome = (time.monotonic(), failure)
        if failure is not None:
            return _error(503, f"storage unavailable: {type(failure).__name__}", 1.0)
        return JSONResponse({"ok": True})

    async def login(self, request: Request) -> Response:
        try:  # a token is checked by its signature alone: no storage, no address state
            who = self.identity.verify(_bearer(request))
        except Unauthenticated:
            await self.throttle.hit("failed", self._address(request))
            raise
        await self.throttle.hit("session", who.user)
        session = await self.sessions.create({"user": who.user})
        self._wrote()
        return JSONResponse(
            {
                "session": session.id,
                "user": who.user,
                "expires": session.expires,
                "ends": session.ends,
            },
            status_code=201,
        )

    async def logout(self, request: Request) -> Response:
        session, _ = await self._authenticated(request)
        await self.sessions.delete(session.id)
        self.known_sessions.remember(session.id, DEAD)
        return Response(status_code=204)

    async def conversations_endpoint(self, request: Request) -> Response:
        _, who = await self._authenticated(request, "read" if request.method == "GET" else "write")
        if request.method == "GET":
            ids, after = await self.conversations.conversation_page(
                who.user, limit=_limit(request, default=100), after=_query(request, "after")
            )
            return JSONResponse({"conversations": ids, "next_after": after})
        cid = await self.conversations.create(who.user)
        return JSONResponse({"conversation": cid}, status_code=201)

    async def chat(self, request: Request) -> Response:
        _, who = await self._authenticated(request, "write")
        body = await self._body(request)
        text = inputs.text(body.get("message"), "message", max_bytes=self.limits.max_message_bytes)
        if body.get("conversation") is None:
            cid = await self.conversations.create(who.user)
        else:
            cid = await self._owned(body.get("conversation"), who)
        question = Message("user", text)
        context = await self.conversations.page(
            cid, limit=self.limits.history_window, max_bytes=self.limits.max_response_bytes
        )
        try:  # the turn is stored only once there is a usable reply: no half turns
            reply = await self.responder.reply([*context.messages, question], text)
            answer = Message("assistant", reply)
            if len(reply.encode("utf-8")) > self.limits.max_message_bytes:
                raise ValueError("the reply is over the message limit")
        except Exception as exc:
            return _error(502, f"the responder failed: {type(exc).__name__}")
        asked, answered = await self.conversations.append_turn(cid, [question, answer])
        self._wrote()
        return JSONResponse(
            {"reply": reply, "conversation": cid, "message_ids": [asked.id, answered.id]}
        )

    async def messages(self, request: Request) -> Response:
        _, who = await self._authenticated(request, "write" if request.method == "POST" else "read")
        cid = await self._owned(request.path_params["cid"], who)
        if request.method == "POST":
            body = await self._body(request)
            role = body.get("role", "user")
            if role != "user":
                raise InvalidInput("Clients write 'user' messages only.")
            metadata = body.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                raise InvalidInput("'metadata' must be an object.")
            if metadata is not None and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
                raise InvalidInput(f"'metadata' is over {MAX_METADATA_BYTES} bytes as JSON.")
            content = inputs.text(
                body.get("content"), "content", max_bytes=self.limits.max_message_bytes
            )
            stored = await self.conversations.append(
                cid, Message("user", content, metadata=metadata)
            )
            self._wrote()
            return JSONResponse({"message": stored.to_json()}, status_code=201)
        page = await self.conversations.page(
            cid,
            limit=_limit(request, default=50),
            before=_query(request, "before"),
            max_bytes=self.limits.max_response_bytes,
        )
        return JSONResponse(
            {"messages": [m.to_json() for m in page.messages], "next_before": page.next_before}
        )

    async def delete_conversation(self, request: Request) -> Response:
        _, who = await self._authenticated(request, "write")
        cid = await self._owned(request.path_params["cid"], who)
        removed = await self.conversations.delete(cid, who.user)
        return JSONResponse({"deleted": removed})


class HostCheck:
    """Answers only for the configured host names (against DNS rebinding of a local
    instance): a request with another ``Host`` gets 400. ``*.example.com`` matches
    subdomains; IPv6 literals are written without brackets (``::1``)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.exact = {h.strip("[]").lower() for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))
        self.any = "*" in self.exact

    def allowed(self, header: str) -> bool:
        host = header.strip().lower()
        if host.startswith("["):
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        return (
            self.any or host in self.exact or bool(self.suffixes and host.endswith(self.suffixes))
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not self.allowed(host):
                response = _error(400, "invalid host header")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
