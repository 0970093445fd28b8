"""Chunk stores behind one interface: `LocalStore` (a directory) and `PgVectorStore`."""

from llmlab.rag.stores.base import ChunkStore, Hit, Where, matches
from llmlab.rag.stores.local import LocalStore, StoreError

__all__ = ["ChunkStore", "Hit", "LocalStore", "StoreError", "Where", "matches"]
