"""Sparse BM25 retrieval over segments: bm25s's tokenizer and its Lucene BM25, scored lazily.

bm25s scores eagerly: its index stores idf(t) * tfc(t, d) for every posting, so corpus-wide
statistics (N, df, avgdl) are baked into each stored number, and adding or deleting one
chunk would mean re-indexing everything. An incremental store needs Lucene's layout
instead: immutable per-segment postings of raw term frequencies, with the statistics
gathered over the live rows of all segments at query time. The formula is bm25s's
`method="lucene"` (k1=1.5, b=0.75), and the tests check our scores against bm25s's:

    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    score(d) = sum over query tokens t of idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

K1, B = 1.5, 0.75


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # stemming helps recall a little; BM25 works without it
        return None


def tokenize(texts: list[str], progress: bool = False) -> Any:
    """bm25s tokens (lower-cased words, English stopwords out, Snowball-stemmed): `.ids`
    (a list of token-id lists) and `.vocab` (token -> id)."""
    import bm25s  # seconds to import (it pulls scipy): only when text is tokenized

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=progress)


def query_terms(query: str) -> list[str]:
    import bm25s  # as in tokenize

    return bm25s.tokenize([query], stopwords="en", stemmer=_stemmer(), return_ids=False,
                          show_progress=False)[0]


@dataclass
class Postings:
    """Term -> (rows, term frequencies) for one segment's rows, plus each row's length.

    Column c of the term-major (CSC) layout is rows[indptr[c]:indptr[c+1]]."""

    terms: list[str]
    indptr: np.ndarray  # int64 (n_terms + 1,)
    rows: np.ndarray  # int32 (nnz,)
    tf: np.ndarray  # uint16 (nnz,)
    lengths: np.ndarray  # int32 (n_rows,)
    index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {t: i for i, t in enumerate(self.terms)}

    @property
    def n_rows(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, texts: Sequence[str], progress: bool = False,
              batch: int = 20_000) -> Postings:
        """Tokenize in batches, each turned into numpy (row, term, tf) triples at once:
        bm25s's lists of Python ints for a million chunks would take several GB."""
        vocab: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        lengths = np.zeros(len(texts), dtype=np.int32)
        steps = range(0, len(texts), batch)
        if progress and len(texts) > batch:
            steps = tqdm(steps, desc="bm25 tokenize", unit=f"{batch // 1000}k chunks")
        for s in steps:
            tok = tokenize(list(texts[s : s + batch]))
            remap = np.zeros(max(len(tok.vocab), 1), dtype=np.int64)
            for t, i in tok.vocab.items():
                remap[i] = vocab.setdefault(t, len(vocab))
            lens = np.fromiter(map(len, tok.ids), dtype=np.int64, count=len(tok.ids))
            local = np.fromiter(itertools.chain.from_iterable(tok.ids), dtype=np.int64,
                                count=int(lens.sum()))
            r = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
            # (row, term) pairs -> unique pairs with their counts: the term frequencies
            key, tf = np.unique(r * len(remap) + local, return_counts=True)
            rows.append((key // len(remap) + s).astype(np.int32))
            cols.append(remap[key % len(remap)].astype(np.int32))
            tfs.append(np.minimum(tf, 65535).astype(np.uint16))
            lengths[s : s + len(lens)] = lens
        row = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        col = np.concatenate(cols) if cols else np.zeros(0, np.int32)
        tf = np.concatenate(tfs) if tfs else np.zeros(0, np.uint16)
        order = np.argsort(col, kind="stable")  # term-major; rows stay ascending per term
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(col, minlength=len(vocab)), out=indptr[1:])
        return cls(list(vocab), indptr, row[order], tf[order], lengths)

    def matrix(self) -> Any:
        from scipy import sparse  # seconds to import: only for the sparse matrix

        return sparse.csc_matrix((self.tf, self.rows, self.indptr),
                                 shape=(self.n_rows, len(self.terms)))

    @classmethod
    def concat(cls, parts: Sequence[tuple[Postings, np.ndarray | None]]) -> Postings:
        """The postings of several segments' kept rows (a bool mask each, None = all), in
        order: what a merge or a compaction writes."""
        from scipy import sparse  # as in matrix

        terms: list[str] = []
        index: dict[str, int] = {}
        blocks, lengths = [], []
        for p, keep in parts:
            remap = np.fromiter((index.setdefault(t, len(index)) for t in p.terms),
                                dtype=np.int64, count=len(p.terms))
            coo = p.matrix().tocoo()
            m = sparse.csr_matrix((coo.data, (coo.row, remap[coo.col])),
                                  shape=(p.n_rows, max(len(index), 1)))
            lens = p.lengths
            if keep is not None:
                m, lens = m[np.flatnonzero(keep)], lens[keep]
            blocks.append(m)
            lengths.append(lens)
        terms = list(index)  # dicts keep insertion order: term i is the i-th inserted
        width = len(terms)
        blocks = [sparse.csr_matrix((b.data, b.indices, b.indptr), shape=(b.shape[0], width))
                  for b in blocks]
        m = sparse.vstack(blocks, format="csc") if blocks else sparse.csc_matrix((0, 0))
        m.sort_indices()
        return cls(terms, m.indptr.astype(np.int64), m.indices.astype(np.int32),
                   m.data.astype(np.uint16),
                   np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32))

    # ---- files -------------------------------------------------------------------------
    FILES = ("terms.json", "indptr.npy", "rows.npy", "tf.npy", "lengths.npy")

    def save(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "terms.json").write_text(json.dumps(self.terms, ensure_ascii=False),
                                      encoding="utf-8")
        for name in ("indptr", "rows", "tf", "lengths"):
            np.save(d / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, d: Path) -> Postings:
        terms = json.loads((d / "terms.json").read_text(encoding="utf-8"))
        arrs = [np.load(d / f"{n}.npy", mmap_mode="r") for n in ("indptr", "rows", "tf")]
        return cls(terms, *arrs, np.load(d / "lengths.npy"))


@dataclass
class Part:
    """One segment as BM25 sees it: postings, its live rows (None = all) and an optional
    filter mask (None = no filter)."""

    postings: Postings
    live: np.ndarray | None = None
    allowed: np.ndarray | None = None


def bm25_search(parts: Sequence[Part], query: str, k: int
                ) -> list[tuple[int, int, float]]:
    """Top k (part index, row, score) by Lucene BM25 over the live rows of all parts,
    best first; rows scoring 0 (no query term) are left out."""
    tokens = query_terms(query)
    if not tokens or k <= 0:
        return []
    # A repeated query token counts once per occurrence (as in bm25s); its df only once.
    terms = list(dict.fromkeys(tokens))
    times = {t: np.float32(tokens.count(t)) for t in terms}
    n_live, total_len = 0, 0
    for p in parts:
        lengths = p.postings.lengths
        n_live += p.postings.n_rows if p.live is None else int(p.live.sum())
        total_len += int(lengths.sum() if p.live is None else lengths[p.live].sum())
    if n_live == 0:
        return []
    avgdl = max(total_len / n_live, 1e-9)
    # Pass 1: the postings of each query term in each part, and df over live rows.
    cols: list[list[tuple[np.ndarray, np.ndarray] | None]] = []
    df: dict[str, int] = {}
    for p in parts:
        per_term = []
        for t in terms:
            c = p.postings.index.get(t)
            if c is None:
                per_term.append(None)
                continue
            a, b = p.postings.indptr[c], p.postings.indptr[c + 1]
            rows, tf = p.postings.rows[a:b], p.postings.tf[a:b]
            if p.live is not None:
                keep = p.live[rows]
                rows, tf = rows[keep], tf[keep]
            per_term.append((rows, tf))
            df[t] = df.get(t, 0) + len(rows)
        cols.append(per_term)
    idf = {t: np.log1p((n_live - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, (p, per_term) in enumerate(zip(parts, cols, strict=True)):
        if all(x is None for x in per_term):
            continue
        lengths = p.postings.lengths
        scores = np.zeros(p.postings.n_rows, dtype=np.float32)
        for t, x in zip(terms, per_term, strict=True):
            if x is None or not len(x[0]):
                continue
            rows, tf = x
            tf = tf.astype(np.float32)
            dl = lengths[rows].astype(np.float32)
            norm = np.float32(K1 * (1 - B)) + np.float32(K1 * B / avgdl) * dl
            # rows are unique within one term's postings, so += on the fancy index is exact
            scores[rows] += times[t] * np.float32(idf[t]) * tf / (tf + norm)
        if p.allowed is not None:
            scores[~p.allowed] = 0
        cand = np.flatnonzero(scores > 0)
        if len(cand) > k:
            cand = cand[np.argpartition(-scores[cand], k - 1)[:k]]
        found.append((np.full(len(cand), i), cand, scores[cand]))
    if not found:
        return []
    part = np.concatenate([f[0] for f in found])
    rows = np.concatenate([f[1] for f in found])
    scores = np.concatenate([f[2] for f in found])
    # best first; ties by (part, row) so the order is deterministic
    order = np.lexsort((rows, part, -scores))[:k]
    return [(int(part[j]), int(rows[j]), float(scores[j])) for j in order]
