"""Retrieval metrics (recall@k, MRR, nDCG@10) over a labeled JSONL set, and the builder of
the Python-docs set: section titles as queries, section bodies as the relevant documents.

qrels JSONL: {"query": "...", "relevant": ["<doc_id or source relative to the root>", ...]}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmlab.data.jsonl import read_jsonl

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")  # apt-get install python3.11-doc


@dataclass
class Qrel:
    query: str
    relevant: set[str]


def load_qrels(path: str | Path) -> list[Qrel]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such qrels file")
    out = []
    for n, obj in read_jsonl(path):
        q, rel = (obj.get("query"), obj.get("relevant")) if isinstance(obj, dict) else (0, 0)
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f'{path}:{n}: expected a non-empty string "query"')
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) for r in rel):
            raise ValueError(f'{path}:{n}: expected "relevant" to be a non-empty list of strings')
        out.append(Qrel(q, set(rel)))
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


# ---- metrics (binary relevance; `ranked` is a list of document ids, best first) ----------
def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: set[str]) -> float:
    return next((1.0 / r for r, d in enumerate(ranked, 1) if d in relevant), 0.0)


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(r + 1) for r, d in enumerate(ranked[:k], 1) if d in relevant)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def score_runs(
    runs: Sequence[Sequence[str]], qrels: Sequence[Qrel], k: int
) -> dict[str, float]:
    pairs = list(zip(runs, qrels, strict=True))
    n = len(pairs)
    return {
        f"recall@{k}": sum(recall_at_k(r, q.relevant, k) for r, q in pairs) / n,
        "mrr": sum(reciprocal_rank(r, q.relevant) for r, q in pairs) / n,
        "ndcg@10": sum(ndcg_at_k(r, q.relevant, 10) for r, q in pairs) / n,
    }


def doc_ranking(hits: Sequence[Any], relevant: set[str]) -> list[str]:
    """Chunks -> documents, first occurrence wins; a document is named by whichever of its
    doc_id / source the qrels use."""
    out: list[str] = []
    for h in hits:
        c = h.chunk
        keys = (c.doc_id, c.source, c.source.split("#L")[0])
        key = next((x for x in keys if x in relevant), c.doc_id)
        if key not in out:
            out.append(key)
    return out


def evaluate(
    index: Any,
    qrels: Sequence[Qrel],
    methods: Sequence[str] = ("bm25", "dense", "hybrid"),
    k: int = 10,
    reranker: Any = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """{method: metrics}. "<method>+rerank" entries are added when a reranker is given."""
    depth = max(k, 10)
    results = {}
    plans = [(m, None) for m in methods]
    if reranker is not None:
        plans += [(f"{m}+rerank", reranker) for m in methods if m == "hybrid"]
    for name, rr in plans:
        method = name.split("+")[0]
        runs = []
        for q in tqdm(qrels, desc=f"eval {name}", disable=not progress, unit="q"):
            # 3x chunks: several chunks of one document collapse into one entry.
            hits = index.retrieve(q.query, method=method, top_k=3 * depth, reranker=rr,
                                  with_cosine=False)
            runs.append(doc_ranking(hits, q.relevant)[:depth])
        results[name] = score_runs(runs, qrels, k)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = list(next(iter(results.values())).keys())
    lines = [f"{'method':<16}" + "".join(f"{c:>11}" for c in cols)]
    for m, row in results.items():
        lines.append(f"{m:<16}" + "".join(f"{row[c]:>11.4f}" for c in cols))
    return "\n".join(lines)


# ---- the Python-docs labeled set ---------------------------------------------------------
_UNDER = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.-]+:`[~!]?([^`<]*?)(?:\s*<[^>]*>)?`")
_GENERIC = re.compile(
    r"^(examples?|notes?|usage|introduction|overview|summary|see also|functions|classes|"
    r"constants|exceptions|module contents|methods|attributes|api|reference|contents|"
    r"\w+ objects?|other .*|more .*)$",
    re.I,
)


def clean_title(t: str) -> str:
    t = _ROLE.sub(r"\1", t)
    return re.sub(r"\s+", " ", t.replace("``", "").replace("---", "—").replace("*", "")).strip()


def rst_sections(text: str) -> list[tuple[str, str]]:
    """(title, body) for every section of a reStructuredText file (title text excluded)."""
    lines = text.splitlines()
    heads = []
    for i in range(1, len(lines)):
        t = lines[i - 1].strip()
        if t and _UNDER.match(lines[i]) and len(lines[i].strip()) >= len(t) and not \
                _UNDER.match(lines[i - 1]):
            heads.append(i - 1)
    out = []
    for j, h in enumerate(heads):
        end = heads[j + 1] if j + 1 < len(heads) else len(lines)
        body = lines[h + 2 : end]
        if body and j + 1 < len(heads) and _UNDER.match(lines[end - 1] if end else ""):
            body = body[:-1]  # the next title's overline
        out.append((lines[h].strip(), "\n".join(body).strip()))
    return out


def build_pydocs_set(
    out_dir: str | Path,
    src: str | Path = PYDOCS,
    subdirs: Sequence[str] = ("tutorial",),
    limit: int | None = None,
    min_chars: int = 300,
    max_chars: int = 6000,
) -> tuple[Path, Path]:
    """Write section bodies as `<out>/docs/<file>/<n>.txt` and `<out>/qrels.jsonl`.

    Sections with generic or repeated titles (which can't identify one section) are skipped;
    `limit` keeps an even spread of that many sections. Returns (docs dir, qrels path).
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(
            f"{src}: Python docs sources missing (apt-get install python3.11-doc)"
        )
    found: list[tuple[str, str, str]] = []  # (source, title, body)
    for sub in subdirs:
        for f in sorted((src / sub).rglob("*.rst.txt")):
            stem = f.relative_to(src).as_posix().removesuffix(".rst.txt")
            for n, (title, body) in enumerate(rst_sections(f.read_text(encoding="utf-8"))):
                title = clean_title(title)
                if len(title.split()) < 2 or _GENERIC.match(title):
                    continue
                if min_chars <= len(body) <= max_chars:
                    found.append((f"{stem}/{n:03d}.txt", title, body))
    counts: dict[str, int] = {}
    for _, t, _ in found:
        counts[t.lower()] = counts.get(t.lower(), 0) + 1
    found = [x for x in found if counts[x[1].lower()] == 1]
    if limit and len(found) > limit:
        step = len(found) / limit
        found = [found[int(i * step)] for i in range(limit)]
    out = Path(out_dir)
    docs = out / "docs"
    for source, _, body in found:
        (docs / source).parent.mkdir(parents=True, exist_ok=True)
        (docs / source).write_text(body + "\n", encoding="utf-8")
    qrels = out / "qrels.jsonl"
    with open(qrels, "w", encoding="utf-8") as fh:
        for source, title, _ in found:
            fh.write(json.dumps({"query": title, "relevant": [source]}, ensure_ascii=False) + "\n")
    return docs, qrels
