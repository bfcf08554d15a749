"""One writer process of the atomicity tests: ``python -m tests.support.rmw_writer ID K ACKS``.

Opens the store as the bot does (``open_store()`` from the environment) and runs K rounds
of read-modify-write commands of every kind on shared keys, each round's commands
concurrently (as a bot's tasks would). After each command is acknowledged it appends one
line to ACKS (flushed), so a test that kills this process knows what it acknowledged.

``--only incr`` runs only INCR (the kill and hot-key tests); ``--rate R`` paces rounds to R
per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from brainbot.composition import open_store

Op = Callable[[Any, str, int], Awaitable[object]]

# command -> what one writer does in round i (``w`` is the writer's id)
OPS: dict[str, Op] = {
    "incr": lambda r, w, i: r.incr("rmw:counter"),
    "incrbyfloat": lambda r, w, i: r.incrbyfloat("rmw:float", 0.5),
    "append": lambda r, w, i: r.append("rmw:text", "x"),
    "rpush": lambda r, w, i: r.rpush("rmw:list", f"{w}:{i}"),
    "hincrby": lambda r, w, i: r.hincrby("rmw:hash", "field", 1),
    "hset": lambda r, w, i: r.hset("rmw:fields", f"{w}:{i}", i),
    "sadd": lambda r, w, i: r.sadd("rmw:set", f"{w}:{i}"),
    "zadd-incr": lambda r, w, i: r.zadd("rmw:zset", {"member": 1}, incr=True),
    "setnx": lambda r, w, i: r.set(f"rmw:claim:{i}", w, nx=True),
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("writer")
    parser.add_argument("rounds", type=int)
    parser.add_argument("acks")
    parser.add_argument("--only", action="append")
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    ops = {name: OPS[name] for name in (args.only or OPS)}
    store = open_store()
    fd = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    start = time.monotonic()
    try:
        for i in range(args.rounds):
            if args.rate:
                await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))

            async def one(name: str, op: Op, i: int = i) -> None:
                answer = await op(store, args.writer, i)
                os.write(fd, f"{name} {i} {answer!r}\n".encode())  # acknowledged

            await asyncio.gather(*(one(name, op) for name, op in ops.items()))
    finally:
        os.close(fd)
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
