"""Redis clients for ``REDIS_URL``, which may name a single server or any node of a Redis Cluster.

Whether it is a cluster is asked once per URL (``INFO cluster``), so users set nothing
else; everything Relevo keeps works on both (keys carry hash tags, scripts touch one
slot per call, multi-key reads go through pipelines).
"""

from __future__ import annotations

from functools import lru_cache

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

AnyRedis = aioredis.Redis | AsyncRedisCluster


@lru_cache(maxsize=16)
def is_cluster(url: str) -> bool:
    """Whether the server at ``url`` runs in cluster mode (False when it cannot be asked)."""
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as probe:
            return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.RedisError:
        return False


def connect(url: str, **options: object) -> AnyRedis:
    """An asyncio client for ``url``: a cluster client when the server is a cluster node."""
    if is_cluster(url):
        return AsyncRedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def connect_sync(url: str) -> redis.Redis | RedisCluster:
    """A blocking client for ``url`` (the runtime's and the tests' bookkeeping)."""
    return RedisCluster.from_url(url) if is_cluster(url) else redis.Redis.from_url(url)
