"""Word geometry on real embeddings: nearest neighbours and analogies by cosine similarity.

Two spaces: MiniLM sentence embeddings of each word (contextual, mean-pooled), and
SmolLM2's input embedding table (one row per token; only single-token words fit)."""

from __future__ import annotations

from importlib.resources import files

import torch
import torch.nn.functional as F


def word_list() -> list[str]:
    text = files("llmlab.explain").joinpath("data/words.txt").read_text()
    return [w.strip() for w in text.splitlines() if w.strip()]


def cosine_neighbours(
    query: torch.Tensor, table: torch.Tensor, labels: list[str], k: int, exclude: set[str] = ()
) -> list[tuple[str, float]]:
    """The k rows of `table` most cosine-similar to `query`, skipping `exclude`."""
    sims = F.normalize(table.float(), dim=-1) @ F.normalize(query.float(), dim=-1)
    order = torch.argsort(sims, descending=True).tolist()
    out = []
    for i in order:
        if labels[i] in exclude:
            continue
        out.append((labels[i], float(sims[i])))
        if len(out) == k:
            break
    return out


def analogy_vector(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """ "a is to b as c is to ?" -> b - a + c on unit vectors (king - man + woman: a=man,
    b=king, c=woman), the 3CosAdd rule of Mikolov et al. 2013."""
    a, b, c = (F.normalize(v.float(), dim=-1) for v in (a, b, c))
    return b - a + c


def token_table(lm: object, words: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Rows of a causal LM's input embedding table for words that are one token
    (with a leading space, as they appear mid-sentence)."""
    tok = lm.tokenizer  # type: ignore[attr-defined]
    emb = lm.model.model.embed_tokens.weight.detach()  # type: ignore[attr-defined]
    rows, kept = [], []
    for w in words:
        ids = tok.encode(" " + w)
        if len(ids) == 1:
            rows.append(ids[0])
            kept.append(w)
    return emb[torch.tensor(rows, dtype=torch.long)].float(), kept
