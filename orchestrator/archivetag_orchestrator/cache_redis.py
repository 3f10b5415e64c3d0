"""The result cache in Redis, shared by several orchestrator replicas.

Each answer is one string key with a TTL that every hit renews (GETEX), so answers nobody asks for
expire. The size bound is the server's: run it with `maxmemory` and `maxmemory-policy allkeys-lru`
(deploy/ does), on a database of its own (entries are counted with DBSIZE).
"""

from __future__ import annotations

import redis.asyncio as redis

PREFIX = b"archivetag:result:"
# A Redis server that stops answering costs a lookup this long, then the image is tagged uncached.
TIMEOUT_SECONDS = 2.0


class RedisStore:
    name = "redis"

    def __init__(self, url: str, ttl_seconds: int):
        self.ttl = ttl_seconds
        self._client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS,
                                            socket_connect_timeout=TIMEOUT_SECONDS)

    async def get(self, key: bytes) -> bytes | None:
        value = await self._client.getex(PREFIX + key.hex().encode(), ex=self.ttl)
        assert not isinstance(value, str)  # decode_responses is off: Redis answers bytes
        return value

    async def put(self, key: bytes, value: bytes) -> None:
        await self._client.set(PREFIX + key.hex().encode(), value, ex=self.ttl)

    async def delete(self, key: bytes) -> None:
        await self._client.delete(PREFIX + key.hex().encode())

    async def usage(self) -> tuple[int, int, int]:
        entries = await self._client.dbsize()
        memory = await self._client.info("memory")
        stats = await self._client.info("stats")
        return entries, memory["used_memory"], stats["evicted_keys"]

    async def close(self) -> None:
        await self._client.aclose()
