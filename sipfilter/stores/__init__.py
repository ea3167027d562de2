"""Where lists, consents and counters live: `open_store(config)` picks the embedded or the Redis backend.

Async factory: `store = await open_store(config)`, then `await store.close()`. Nothing else is exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipfilter.stores.base import ContractRecord, StoreUnavailable
from sipfilter.stores.writable import StoreError, WritableStore

if TYPE_CHECKING:
    from sipfilter.config import Config, StoreConfig


async def open_store(config: Config | StoreConfig, *, watch: bool = True,
                     poll_interval: float = 1.0, worker: tuple[int, int] = (0, 1)) -> WritableStore:
    """Open the configured backend. `watch` polls for changes by other processes/instances every
    `poll_interval` seconds (the CLI passes False). `worker`: (index, count) of a worker process (the
    embedded store keeps the attempts of that worker's callees only). Raises StoreUnavailable when it cannot
    be opened."""
    sc: StoreConfig = config.store if hasattr(config, "store") else config
    if sc.backend == "redis":
        from sipfilter.stores.redis_store import RedisStore

        return await RedisStore.open(sc.redis_url, watch=watch, poll_interval=poll_interval)
    from sipfilter.stores.embedded import EmbeddedStore

    return await EmbeddedStore.open(sc.data_dir, watch=watch, poll_interval=poll_interval, worker=worker)


__all__ = ["ContractRecord", "StoreError", "StoreUnavailable", "WritableStore", "open_store"]
