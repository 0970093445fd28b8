"""Grounded answers on the Python-docs tutorial set: how often the answer cites the labeled
section, as the model wrote it and after citation attribution (llmlab.rag.answer.attribute).

Each question is "Explain <section title> in Python." over hybrid top 3; SmolLM2-135M
(int8, greedy) answers twice: "prefill" starts the reply with "According to source [" so
the model picks a number; "free" lets it answer, and citations come from attribution only
(a sentence is cited to the source sharing most of its content words, at least 2). Each
answer's citations are scored as written and after attribution. The upper bound is how
often the labeled section is among the 3 sources at all.

    python benchmarks/rag_answers.py [--answers 20] [--out runs/rag_answers.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import emit, print_machine, stopwatch

from llmlab.rag.answer import AnswerStream, attribute, check_citations, source_texts
from llmlab.rag.embed import get_embedder
from llmlab.rag.evaluate import build_pydocs_set, load_qrels
from llmlab.rag.llm import get_lm
from llmlab.rag.pipeline import RagIndex


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subdir", default="tutorial")
    ap.add_argument("--answers", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print_machine()
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="rag-answers-"))
    docs, qpath = build_pydocs_set(tmp / "set", subdirs=(args.subdir,))
    qrels = load_qrels(qpath)
    idx = RagIndex.create(tmp / "idx", get_embedder("onnx"))
    idx.index([docs], 256, 32, progress=False)
    lm = get_lm()
    step = len(qrels) / args.answers
    rows = []
    variants = {"prefill": {"attribute": False},  # the model picks the number first
                "free": {"attribute": False, "prefill": ""}}  # cited by attribution only
    for q in [qrels[int(i * step)] for i in range(args.answers)]:
        question = f"Explain {q.query.lower()} in Python."
        hits = idx.retrieve(question, "hybrid", 3)
        labeled = [n for n, h in enumerate(hits, 1) if h.chunk.source in q.relevant]
        row: dict = {"question": question, "labeled_sources": labeled}
        for name, kw in variants.items():
            t = stopwatch()
            s = AnswerStream(question, hits, lm=lm, **kw)
            for _ in s:
                pass
            a = s.result
            assert a is not None
            text, changes = attribute(a.text, source_texts(hits, lm.tokenizer),
                                      add_missing=2 if name == "free" else 0)
            row[name] = {"answer": a.raw, "cited": [n for n, _ in a.citations],
                         "attributed": check_citations(text, len(hits))[1],
                         "changes": changes, "invalid": a.invalid, "refused": a.refused,
                         "secs": round(t(), 1)}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    n = len(rows)

    def hit(r: dict, v: str, key: str) -> bool:
        return bool(set(r[v][key]) & set(r["labeled_sources"]))

    summary: dict = {"n": n, "labeled_section_among_sources":
                     sum(bool(r["labeled_sources"]) for r in rows)}
    for v in variants:
        summary[v] = {
            "answers_with_a_citation_model": sum(bool(r[v]["cited"]) for r in rows),
            "answers_with_a_citation_attributed": sum(bool(r[v]["attributed"]) for r in rows),
            "cited_labeled_section_model": sum(hit(r, v, "cited") for r in rows),
            "cited_labeled_section_attributed": sum(hit(r, v, "attributed") for r in rows),
            "answers_changed_by_attribution": sum(bool(r[v]["changes"]) for r in rows),
            "invalid_citations": sum(len(r[v]["invalid"]) for r in rows),
            "only_source_1_model": sum(r[v]["cited"] == [1] for r in rows),
            "median_answer_s": sorted(r[v]["secs"] for r in rows)[n // 2]}
    emit(summary)
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1,
                                             ensure_ascii=False))


if __name__ == "__main__":
    main()
