"""One error tree with one root, drawn in one docstring; library errors translated where
they enter (sqlite3 in the embedded KV, redis-py in the Redis backend); the service maps
errors by branch."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sqlite3
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions

import brainbot
from brainbot import errors
from brainbot.kv import EmbeddedKV
from brainbot.service import ChatService
from brainbot.storage import KVStore, RedisBackend
from tests.support.processes import free_port


def package_errors() -> dict[str, type[BaseException]]:
    """Every exception class a brainbot module defines (private helpers aside)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(brainbot.__path__, "brainbot."):
        if info.name.endswith("__main__"):
            continue  # running it is the CLI
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("brainbot")
                and not name.startswith("_")
            ):
                found[name] = value
    return found


def test_every_error_of_the_package_hangs_under_one_root() -> None:
    classes = package_errors()
    assert len(classes) > 30
    assert [n for n, c in classes.items() if not issubclass(c, errors.BrainbotError)] == []


def test_the_one_docstring_draws_every_error() -> None:
    tree = errors.__doc__ or ""
    assert [name for name in package_errors() if name not in tree] == []


def test_the_branches_callers_act_on() -> None:
    invalid = [errors.ConfigError, errors.KeyTooLong, errors.DataError, errors.TTLTooShort]
    invalid += [errors.ConversationError, errors.SessionError, errors.RollbackError]
    assert all(issubclass(c, errors.InvalidInput) and issubclass(c, ValueError) for c in invalid)
    later = [errors.KVTransportError, errors.KVStorageError, errors.RateLimited]
    later += [errors.ServerError, errors.RedisUnavailable, errors.WriteRateExceeded]
    assert all(issubclass(c, errors.Unavailable) for c in later)
    assert not issubclass(errors.AuthenticationError, errors.Unavailable)
    assert issubclass(errors.SessionNotFound, KeyError)  # what ported code may catch
    assert issubclass(errors.ResponseError, redis.exceptions.ResponseError)
    assert issubclass(errors.RedisUnavailable, redis.exceptions.ConnectionError)


def lock(path: Path) -> sqlite3.Connection:
    """Another process's long write transaction on the embedded KV's file."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


async def test_a_locked_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    kv = EmbeddedKV(tmp_path / "kv.sqlite3", busy_timeout=0.2)
    await kv.put("k", b"v")
    holder = lock(kv.path)
    try:
        with pytest.raises(errors.KVStorageError, match="locked") as caught:
            await kv.put("k", b"w")
        assert isinstance(caught.value, errors.Unavailable)
    finally:
        holder.rollback()
        holder.close()
    assert (await kv.get("k")) is not None
    await kv.aclose()


async def test_redis_down_is_unavailable_and_still_redis_pys_connection_error() -> None:
    store = RedisBackend(aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(errors.RedisUnavailable) as caught:
        await store.get("k")
    assert isinstance(caught.value, redis.exceptions.ConnectionError)
    await store.aclose()


async def test_the_service_answers_by_branch(tmp_path: Path) -> None:
    from brainbot.service import IdentityVerifier
    from brainbot.service.auth import mint

    secret = "s" * 32
    namespace = EmbeddedKV(tmp_path / "kv.sqlite3", busy_timeout=0.2)
    service = ChatService(KVStore(namespace), identity=IdentityVerifier(secret=secret))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.app()), base_url="http://bot"
    ) as http:
        login = await http.post(
            "/sessions", headers={"Authorization": f"Bearer {mint(secret, 'alice')}"}
        )
        auth = {"Authorization": f"Bearer {login.json()['session']}"}
        turn = {"message": "hi"}
        assert (await http.post("/chat", json={"message": ""}, headers=auth)).status_code == 400
        unknown = {"Authorization": "Bearer " + "x" * 43}
        assert (await http.post("/chat", json=turn, headers=unknown)).status_code == 401
        assert (await http.get("/conversations/nope/messages", headers=auth)).status_code == 404
        holder = lock(namespace.path)
        try:
            answer = await http.post("/chat", json=turn, headers=auth)
        finally:
            holder.rollback()
            holder.close()
        assert answer.status_code == 503  # was a 500 after 30 s
        assert "KVStorageError" in answer.json()["error"]
        assert (await http.post("/chat", json=turn, headers=auth)).status_code == 200
    await namespace.aclose()


def test_every_error_has_a_repr_even_those_that_are_also_redis_pys() -> None:
    """redis-py's RedisError.__repr__ reads an attribute its __init__ sets, which ours never
    run: repr(DataError(...)) raised AttributeError (and broke pytest's error reports)."""
    import brainbot.errors as errors

    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.BrainbotError):
            try:
                error = cls("some message")
            except TypeError:
                try:
                    error = cls("some message", retry_after=1.0)  # Throttled, BudgetExhausted
                except TypeError:
                    error = cls()  # WrongTypeError takes no message
            assert repr(error).startswith(cls.__name__ + "(")
