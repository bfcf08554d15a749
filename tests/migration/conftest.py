"""The source every migration test reads: the session's redis-server, emptied around it."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis


@pytest.fixture
def source(redis_client: aioredis.Redis) -> aioredis.Redis:
    return redis_client
