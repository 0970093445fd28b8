"""Grounded answers on the Python-docs tutorial set: how often the answer cites the labeled
section, as the model wrote it and after citation attribution (llmlab.rag.answer.attribute).

Each question is "Explain <section title> in Python." over hybrid top 3; SmolLM2-135M
(int8, greedy) answers once, and both citation variants are scored on that same text.
The upper bound is how often the labeled section is among the 3 sources at all.

    python benchmarks/rag_answers.py [--answers 20] [--out runs/rag_answers.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

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
    for q in [qrels[int(i * step)] for i in range(args.answers)]:
        question = f"Explain {q.query.lower()} in Python."
        hits = idx.retrieve(question, "hybrid", 3)
        t = time.perf_counter()
        s = AnswerStream(question, hits, lm=lm, attribute=False)
        for _ in s:
            pass
        a = s.result
        assert a is not None
        secs = time.perf_counter() - t
        labeled = [n for n, h in enumerate(hits, 1) if h.chunk.source in q.relevant]
        raw = [n for n, _ in a.citations]
        fixed_text, changes = attribute(a.text, source_texts(hits, lm.tokenizer))
        _, fixed, _ = check_citations(fixed_text, len(hits))
        rows.append({"question": question, "labeled_sources": labeled, "answer": a.raw,
                     "cited": raw, "cited_after_attribution": fixed,
                     "repointed": changes, "invalid": a.invalid, "refused": a.refused,
                     "secs": round(secs, 1)})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    n = len(rows)
    summary = {
        "n": n,
        "labeled_section_among_sources": sum(bool(r["labeled_sources"]) for r in rows),
        "answers_with_a_valid_citation": sum(bool(r["cited"]) for r in rows),
        "cited_labeled_section_model": sum(bool(set(r["cited"]) & set(r["labeled_sources"]))
                                           for r in rows),
        "cited_labeled_section_attributed": sum(
            bool(set(r["cited_after_attribution"]) & set(r["labeled_sources"])) for r in rows),
        "answers_with_repointed_citations": sum(bool(r["repointed"]) for r in rows),
        "invalid_citations": sum(len(r["invalid"]) for r in rows),
        "cites_only_source_1_model": sum(r["cited"] == [1] for r in rows),
        "median_answer_s": sorted(r["secs"] for r in rows)[n // 2],
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1,
                                             ensure_ascii=False))


if __name__ == "__main__":
    main()
