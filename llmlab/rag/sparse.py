"""Sparse BM25 retrieval over chunk texts with `bm25s` (Lucene BM25, English stopwords,
Snowball stemming when PyStemmer is installed)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

K1, B = 1.5, 0.75


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # stemming helps recall a little; BM25 works without it
        return None


def tokenize(texts: list[str]) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False)


class BM25Index:
    """BM25 over a fixed list of texts; row i of the index is text i."""

    def __init__(self, model: Any, n_docs: int) -> None:
        self.model = model
        self.n_docs = n_docs

    @classmethod
    def build(cls, texts: list[str], progress: bool = False) -> BM25Index:
        import bm25s

        model = bm25s.BM25(k1=K1, b=B, method="lucene")
        if texts:
            model.index(tokenize(texts), show_progress=progress)
        return cls(model, len(texts))

    def search(
        self, query: str, k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top k by BM25, best first; rows with score 0 are left out.

        `mask` (bool per row) restricts the search, for metadata filters.
        """
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        if self.n_docs == 0 or k <= 0:
            return empty
        qt = tokenize([query])
        if not qt.ids or not qt.ids[0]:  # only stopwords or punctuation: nothing to match
            return empty
        k = min(k, self.n_docs)
        wm = None if mask is None else mask.astype(np.float32)
        rows, scores = self.model.retrieve(
            qt, k=k, show_progress=False, weight_mask=wm, n_threads=0
        )
        rows, scores = rows[0].astype(np.int64), scores[0].astype(np.float32)
        keep = scores > 0
        return rows[keep], scores[keep]

    def save(self, directory: Path) -> None:
        if self.n_docs == 0:  # bm25s can't save an empty index; load() rebuilds it
            directory.mkdir(parents=True, exist_ok=True)
            return
        self.model.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, n_docs: int) -> BM25Index:
        import bm25s

        if n_docs == 0:
            return cls.build([])
        # bm25s logs at INFO on load; keep the CLI output clean.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        return cls(bm25s.BM25.load(str(directory), show_progress=False, mmap=False), n_docs)
