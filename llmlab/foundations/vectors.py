"""Word-vector geometry shared by our word2vec vectors and SmolLM2's token embeddings:
nearest neighbours and analogies by cosine similarity, and a 2-D PCA map.

The maths is the playground's (`llmlab.explain.embeddings`, `llmlab.explain.projection`);
a space only says which rows are candidates and how a word finds its vector."""

from __future__ import annotations

import torch

from llmlab.explain.embeddings import analogy_vector, cosine_neighbours
from llmlab.explain.projection import fit_pca


class VectorSpace:
    """`labels[i]` names row i of `table`; subclasses may override `vector` for words that
    have a vector but are not candidates."""

    name = "vectors"

    def __init__(self, labels: list[str], table: torch.Tensor) -> None:
        if len(labels) != table.shape[0]:
            raise ValueError(f"{len(labels)} labels for {table.shape[0]} rows")
        self.labels, self.table = labels, table.float()
        self._index = {w: i for i, w in enumerate(labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, word: str) -> bool:
        try:
            self.vector(word)
        except ValueError:
            return False
        return True

    def key(self, word: str) -> str:
        """The label a query word is looked up as (word2vec lowercases; BPE keeps case)."""
        return word.strip()

    def vector(self, word: str) -> torch.Tensor:
        k = self.key(word)
        if k not in self._index:
            raise ValueError(f"{word!r} is not in the {self.name} vocabulary")
        return self.table[self._index[k]]

    def neighbours(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The k most cosine-similar candidates, the word itself left out."""
        return cosine_neighbours(self.vector(word), self.table, self.labels, k, {self.key(word)})

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
        """a is to b as c is to ?: the candidates nearest b - a + c (3CosAdd), with the
        three query words left out, as in Mikolov et al.'s evaluation."""
        target = analogy_vector(self.vector(a), self.vector(b), self.vector(c))
        skip = {self.key(w) for w in (a, b, c)}
        return cosine_neighbours(target, self.table, self.labels, k, skip)

    def project(self, words: list[str]) -> dict[str, list]:
        """2-D PCA coordinates of the words' unit vectors (the plane of largest spread of
        this set), with the fraction of variance each axis explains."""
        if len(words) < 2:
            raise ValueError("words: need at least 2 words to project")
        x = torch.stack([self.vector(w) for w in words])
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        p = fit_pca(x)
        return {
            "words": list(words),
            "points": p.transform(x).tolist(),
            "explained": p.explained.tolist(),
        }
