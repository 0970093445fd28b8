"""The interface every chunk store implements: add, delete, update, get, filtered search.

Scores are cosine similarities (vectors are L2-normalised), higher is better.
A `where` filter maps a field (`doc_id`, `source`, `title`, or a key of the chunk's
`meta`) to a value or a list of accepted values; all fields must match.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmlab.rag.chunk import Chunk

Where = dict[str, Any]
COLUMNS = ("chunk_id", "doc_id", "source", "title")


@dataclass
class Hit:
    chunk: Chunk
    score: float


def field_value(c: Chunk, key: str) -> Any:
    if key in COLUMNS:
        return getattr(c, key)
    return (c.meta or {}).get(key)


def matches(c: Chunk, where: Where | None) -> bool:
    if not where:
        return True
    for key, want in where.items():
        got = field_value(c, key)
        if isinstance(want, (list, tuple, set)):
            if got not in want:
                return False
        elif got != want:
            return False
    return True


def check_vectors(chunks: list[Chunk], vectors: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape != (len(chunks), dim):
        raise ValueError(
            f"vectors: expected shape ({len(chunks)}, {dim}) for {len(chunks)} chunks, "
            f"got {tuple(v.shape)}"
        )
    if not np.isfinite(v).all():
        raise ValueError("vectors: contain NaN or inf")
    return v


class ChunkStore(ABC):
    dim: int

    @abstractmethod
    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Insert chunks with their embeddings; an id already present is an error."""

    @abstractmethod
    def delete(self, chunk_ids: list[str] | None = None, where: Where | None = None) -> int:
        """Remove chunks by id and/or filter; returns how many were removed."""

    def update(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Replace chunks with the same ids (insert those that are new)."""
        self.delete([c.chunk_id for c in chunks])
        self.add(chunks, vectors)

    @abstractmethod
    def get(self, chunk_ids: list[str]) -> list[Chunk | None]:
        """Chunks by id, None where unknown."""

    @abstractmethod
    def get_vectors(self, chunk_ids: list[str]) -> np.ndarray:
        """(len(ids), dim) embeddings; unknown ids are an error."""

    @abstractmethod
    def search(self, query: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        """Top k chunks by cosine similarity to the (normalised) query vector."""

    def chunks_where(self, where: Where) -> list[Chunk]:
        """Every chunk matching `where` (a store overrides this with an indexed lookup)."""
        return [c for c in self.iter_chunks() if matches(c, where)]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def iter_chunks(self) -> Iterator[Chunk]:
        """Every chunk, in a stable order (the row order sparse indexes are built in)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""
