"""The log epoch: which incarnation of the broker's log the stream's positions refer to.

Offsets identify a record only within one life of its log. The embedded broker keeps
its log in memory, so after a restart its partitions start again at offset 0, while
Redis (durable) still holds the positions the writer applied and the stages' snapshot
offsets from the log before. Read as positions of the new log, they would make every
new event up to those offsets look like a replay and skip it. So positions count
across epochs: an event's position is its offset shifted by the epoch, every position
of a new epoch comes after every position of the one before, and a snapshot taken in
another epoch keeps its state but reads the new log from its start.

``relevo up`` starts a new epoch whenever it starts the embedded broker (at start and
after a crash), before any Kafka client of the new log runs, and gives it to its
children as ``RELEVO_LOG_EPOCH``; Redis remembers the last one started, so the next is
higher. A durable Kafka cluster keeps epoch 0 for good.

>>> log_offset(0, 41), log_offset(2, 41) > log_offset(1, 10 ** 9)
(41, True)
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from relevo.core.keys import Keys

# 2**40 offsets per partition and epoch; exact in Lua's doubles (2**53) for 8,192 epochs.
EPOCH_SHIFT = 40


def log_offset(epoch: int, offset: int) -> int:
    """A record's offset counted across the epochs of its log."""
    return (epoch << EPOCH_SHIFT) + offset


def start_epoch(client: redis.Redis | RedisCluster, keys: Keys, after: int = 0) -> int:
    """A new epoch, after every one started before on this Redis and after ``after`` (the
    caller's current one, should the counter have been deleted)."""
    epoch = int(client.incr(keys.log_epoch))
    if epoch <= after:
        epoch = after + 1
        client.set(keys.log_epoch, epoch)
    return epoch
