"""``brainbot serve``: the chat service that runs the stores end to end.

    POST   /sessions                       {"user": "alice"}            -> {"session", "expires"}
    DELETE /sessions/{id}
    POST   /chat       {"session", "conversation", "message"}          -> {"reply", ...}
    GET    /conversations/{id}/messages?limit=N&before=ID              -> {"messages": [...]}
    POST   /conversations/{id}/messages    {"role", "content"}         -> {"message": {...}}
    DELETE /conversations/{id}
    GET    /health

The conversation endpoints need a live session (``Authorization: Bearer <session>``), 401
without. Sessions do not own conversations yet: any session may read any conversation id
(ownership checks are future work, noted in docs/storage.md). Bodies over 2 MiB get 413; a
storage outage 503; a failing responder 502, with nothing stored for that turn.

The store comes from the composition root (``open_store()``: kv, dual or redis), so the
service is what an operator restarts when flipping ``BRAINBOT_STORAGE_BACKEND``. Errors
are answered by branch of ``brainbot.errors``: invalid input 400, unauthenticated 401, not
found 404, body too large 413, unavailable 503 (storage down, locked, rate limited).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from brainbot.errors import (
    BadRequest,
    BrainbotError,
    InvalidInput,
    NotFound,
    SessionError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from brainbot.responder import Responder, load_responder
from brainbot.storage.conversations import ConversationStore, Message
from brainbot.storage.protocol import Store
from brainbot.storage.sessions import SessionStore

Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("brainbot.service")


MAX_BODY_BYTES = 2 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise TooLarge
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string.")
    return value


class ChatService:
    def __init__(
        self,
        store: Store,
        *,
        responder: Responder | None = None,
        session_lifetime: int = 3600,
        history_window: int = 20,
    ) -> None:
        self.store = store
        self.conversations = ConversationStore(store)
        self.sessions = SessionStore(store, lifetime=session_lifetime)
        self.responder = responder or load_responder(None)
        self.history_window = history_window

    def app(self) -> Starlette:
        def guarded(handler: Handler) -> Handler:
            async def run(request: Request) -> Response:
                try:  # errors are mapped by branch (brainbot.errors draws the tree)
                    return await handler(request)
                except TooLarge:
                    return _error(413, f"the body is over {MAX_BODY_BYTES} bytes")
                except InvalidInput as exc:
                    return _error(400, str(exc))
                except Unauthenticated:
                    return _error(401, "unknown or expired session")
                except NotFound as exc:
                    return _error(404, str(exc))
                except Unavailable as exc:
                    return _error(503, f"storage unavailable: {type(exc).__name__}")
                except BrainbotError as exc:
                    log.error("request failed: %s", type(exc).__name__)
                    return _error(500, "internal error")

            return run

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.store.aclose()

        return Starlette(
            routes=[
                Route("/health", guarded(self.health), methods=["GET"]),
                Route("/sessions", guarded(self.create_session), methods=["POST"]),
                Route("/sessions/{sid}", guarded(self.delete_session), methods=["DELETE"]),
                Route("/chat", guarded(self.chat), methods=["POST"]),
                Route(
                    "/conversations/{cid}/messages", guarded(self.messages), methods=["GET", "POST"]
                ),
                Route(
                    "/conversations/{cid}", guarded(self.delete_conversation), methods=["DELETE"]
                ),
            ],
            lifespan=lifespan,
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def _session(self, request: Request) -> Any:
        scheme, _, sid = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sid:
            raise Unauthenticated
        try:
            session = await self.sessions.get(sid)
        except SessionError:
            session = None
        if session is None:
            raise Unauthenticated
        return session

    async def create_session(self, request: Request) -> Response:
        body = await _body(request) if request.headers.get("content-length", "0") != "0" else {}
        user = body.get("user")
        if user is not None and (
            not isinstance(user, str) or not user or "/" in user or len(user.encode()) > 128
        ):
            raise BadRequest("'user' must be 1..128 bytes of text without '/'.")
        session = await self.sessions.create({"user": user} if user else {})
        return JSONResponse({"session": session.id, "expires": session.expires}, status_code=201)

    async def delete_session(self, request: Request) -> Response:
        try:
            deleted = await self.sessions.delete(request.path_params["sid"])
        except SessionError:
            deleted = False
        return Response(status_code=204) if deleted else _error(404, "no such session")

    async def chat(self, request: Request) -> Response:
        body = await _body(request)
        sid, cid, text = _text(body, "session"), _text(body, "conversation"), _text(body, "message")
        try:
            session = await self.sessions.get(sid)
        except SessionError:
            session = None
        if session is None:
            return _error(401, "unknown or expired session")
        user = session.data.get("user")
        user_id = user if isinstance(user, str) else None
        question = Message("user", text)
        history = await self.conversations.history(cid, limit=self.history_window)
        try:  # the turn is stored only once there is a reply: a failed turn leaves no trace
            reply = await self.responder.reply([*history, question], text)
        except Exception as exc:
            return _error(502, f"the responder failed: {type(exc).__name__}")
        asked = await self.conversations.append(cid, question, user_id=user_id)
        answered = await self.conversations.append(
            cid, Message("assistant", reply), user_id=user_id
        )
        return JSONResponse(
            {"reply": reply, "conversation": cid, "message_ids": [asked.id, answered.id]}
        )

    async def messages(self, request: Request) -> Response:
        await self._session(request)
        cid = request.path_params["cid"]
        if request.method == "POST":
            body = await _body(request)
            metadata = body.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                raise BadRequest("'metadata' must be an object.")
            stored = await self.conversations.append(
                cid, Message(_text(body, "role"), _text(body, "content"), metadata=metadata)
            )
            return JSONResponse({"message": stored.to_json()}, status_code=201)
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            raise BadRequest("'limit' must be an integer.") from None
        before = request.query_params.get("before") or None
        history = await self.conversations.history(cid, limit=limit, before=before)
        return JSONResponse({"messages": [m.to_json() for m in history]})

    async def delete_conversation(self, request: Request) -> Response:
        await self._session(request)
        removed = await self.conversations.delete(request.path_params["cid"])
        return JSONResponse({"deleted": removed})


async def serve(service: ChatService, host: str, port: int) -> None:
    """Run the chat service; print ``READY http://host:port`` once it accepts requests."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    server = uvicorn.Server(uvicorn.Config(service.app(), log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    print(f"READY http://{host}:{sock.getsockname()[1]}", flush=True)
    await task
