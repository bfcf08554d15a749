"""The main job on embedded defaults: a short tour of the KV namespace layer.

Runs against whatever ``open_namespace()`` picks (the embedded KV unless Cloudflare is
configured), touching only keys under ``demo:`` and removing them at the end.
"""

from __future__ import annotations

import asyncio
import json
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from brainbot.config import Settings
from brainbot.kv import KVValidationError, PutItem, iter_keys, open_namespace

PREFIX = "demo:"


async def tour(console: Console) -> None:
    settings = Settings()
    async with open_namespace(settings) as kv:
        where = "Cloudflare" if settings.uses_cloudflare else str(settings.embedded_kv_path)
        console.rule(f"brainbot KV demo on {kv!r}")
        console.print(f"namespace: [bold]{where}[/]")

        await kv.put(PREFIX + "greeting", "hello from brainbot é🙂")
        entry = await kv.get(PREFIX + "greeting")
        assert entry is not None
        console.print(f"put/get      {PREFIX}greeting -> {entry.text()!r}")

        await kv.put(
            PREFIX + "session:abc",
            json.dumps({"user": "u1", "turns": 3}),
            expiration_ttl=3600,
            metadata={"type": "session", "user": "u1"},
        )
        session = await kv.get(PREFIX + "session:abc")
        assert session is not None
        assert session.expiration is not None
        left = session.expiration - int(time.time())
        console.print(
            f"ttl+metadata {PREFIX}session:abc expires in {left}s, metadata={session.metadata}"
        )

        await kv.put(PREFIX + "blob", bytes(range(256)))
        blob = await kv.get(PREFIX + "blob")
        assert blob is not None
        assert blob.value == bytes(range(256))
        console.print(f"binary       {PREFIX}blob round-trips {len(blob.value)} bytes exactly")

        try:
            await kv.put(PREFIX + "too-short", "x", expiration_ttl=30)
        except KVValidationError as exc:
            console.print(
                f"KV's rules   expiration_ttl=30 -> [yellow]{type(exc).__name__}[/]: {exc}"
            )

        n = 2_000
        items = [PutItem(f"{PREFIX}msg:{i:05d}", f"message {i}") for i in range(n)]
        with Progress(
            TextColumn("bulk put"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("bulk", total=n)
            for start in range(0, n, 250):
                result = await kv.put_many(items[start : start + 250])
                assert result.ok
                progress.advance(task, result.successful_key_count)

        page = await kv.list(prefix=PREFIX + "msg:", limit=10)
        table = Table("first names under demo:msg:", "expiration", "metadata")
        for info in page.keys[:5]:
            table.add_row(info.name, str(info.expiration), json.dumps(info.metadata))
        console.print(table)

        names = [info.name async for info in iter_keys(kv, prefix=PREFIX)]
        console.print(f"list         {len(names)} keys under {PREFIX!r} (UTF-8 byte order)")
        result = await kv.delete_many(names)
        console.print(f"bulk delete  removed {result.successful_key_count} demo keys")
        console.rule("done")


def main() -> None:
    asyncio.run(tour(Console()))


if __name__ == "__main__":
    main()
