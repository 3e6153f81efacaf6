"""Persistence: one SQLite file (schema, queries) and content-addressed blob folders."""

from storage.blobs import BlobError, BlobStore, sha256_hex
from storage.errors import StorageFault, storage_fault
from storage.schema import SCHEMA_VERSION, SchemaTooNewError
from storage.store import LABELS, Store, StoreError, utc_now

__all__ = [
    "BlobError",
    "BlobStore",
    "LABELS",
    "SCHEMA_VERSION",
    "SchemaTooNewError",
    "Store",
    "StorageFault",
    "StoreError",
    "sha256_hex",
    "storage_fault",
    "utc_now",
]
