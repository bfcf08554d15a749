"""The migration's library functions with their namespace opened the way the CLI opens it
(the composition root, from settings), for tests that do not pass one of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainbot.composition import migration_runs, open_namespace
from brainbot.config import Settings
from brainbot.kv import EmbeddedKV
from brainbot.kv.namespace import KVNamespace
from brainbot.migration import (
    Options,
    Report,
    RollbackReport,
    VerifyReport,
    migrate_redis_to_kv,
    rollback,
    verify,
)


def settings_for(tmp_path: Path) -> Settings:
    """Settings of a test's own data dir (embedded KV, runs) under ``tmp_path``."""
    return Settings(BRAINBOT_DATA_DIR=tmp_path / "data")  # type: ignore[call-arg]


async def migrate(
    source: str, settings: Settings, *, namespace: KVNamespace | None = None, **options: Any
) -> Report:
    kv = namespace if namespace is not None else open_namespace(settings, purpose="bulk")
    options.setdefault("options", Options(prefix=settings.kv_prefix))
    try:
        return await migrate_redis_to_kv(
            source, namespace=kv, runs=migration_runs(settings), **options
        )
    finally:
        if namespace is None:
            await kv.aclose()


async def verify_kv(
    source: str, settings: Settings, *, namespace: KVNamespace | None = None, **options: Any
) -> VerifyReport:
    kv = namespace if namespace is not None else open_namespace(settings, purpose="bulk")
    options.setdefault("options", Options(prefix=settings.kv_prefix))
    try:
        return await verify(source, namespace=kv, **options)
    finally:
        if namespace is None:
            await kv.aclose()


async def roll_back(run_id: str, settings: Settings, **options: Any) -> RollbackReport:
    async with open_namespace(settings, purpose="bulk") as kv:
        return await rollback(run_id, runs=migration_runs(settings), namespace=kv, **options)


async def values(settings: Settings, names: list[str]) -> dict[str, bytes | None]:
    """The values the embedded KV of ``settings`` holds under ``names`` (None: absent)."""
    async with EmbeddedKV(settings.embedded_kv_path) as kv:
        found = await kv.get_many(names)
    return {n: (e.value if e else None) for n, e in found.items()}
