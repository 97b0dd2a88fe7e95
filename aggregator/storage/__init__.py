"""Where the aggregator keeps bytes: the `Store` protocol, its backends, and where each object lives.

- `base`: the `Store` protocol, `StoreError` and the safe-key rule;
- `local`: `LocalStore`, a folder on disk;
- `azure`: `AzureStore`, a blob container (the only module importing the Azure SDK, loaded lazily);
- `azure_put`: the direct Put Blob request `AzureStore` writes with (the ingest hot path);
- `url`: `open_store(url, ...)`, the backend `BLAST_LOGS_STORE` names;
- `layout`: every storage key of a job (staging objects, chunks, summary, lock, manifest).
"""

from aggregator.storage.base import Store, StoreError, check_key, check_prefix
from aggregator.storage.local import LocalStore
from aggregator.storage.url import open_store

__all__ = ["LocalStore", "Store", "StoreError", "check_key", "check_prefix", "open_store"]
