"""`llmlab rag index|query|eval`. Wire in with `add_commands(subparsers)`; also runnable as
`python -m llmlab.rag.cli ...`. Handlers return exit codes; errors print `error: ...`.

Handlers import the RAG library inside: it loads torch, and `llmlab --help` must not."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmlab.rag.fuse import METHODS


def add_commands(subparsers: Any) -> None:
    rag = subparsers.add_parser("rag", help="retrieval-augmented answers over your documents")
    sub = rag.add_subparsers(dest="rag_cmd", required=True)

    p = sub.add_parser("index", help="index (or re-index changed) documents into a store")
    p.add_argument("paths", nargs="+", help="files or directories (.txt .md .rst .html .pdf "
                   ".jsonl)")
    p.add_argument("--store", required=True, help="index directory")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="tokens per chunk (default: 256)")
    p.add_argument("--overlap", type=int, default=32,
                   help="tokens shared by neighbouring chunks (default: 32)")
    p.add_argument("--embedder", choices=("onnx", "torch"), default=None,
                   help="MiniLM backend for a new index (default: onnx, the faster one)")
    p.set_defaults(func=cmd_index)

    q = sub.add_parser("query", help="retrieve chunks for a question, optionally answer it")
    q.add_argument("question", help="the question to retrieve for")
    _common(q, "hybrid")
    q.add_argument("--top-k", type=int, default=5, help="chunks to return (default: 5)")
    q.add_argument("--rerank", action="store_true", help="rerank with SmolLM2 (slow)")
    q.add_argument("--answer", action="store_true", help="generate a cited answer")
    q.add_argument("--min-score", type=float, default=None,
                   help="refuse to answer below this query-chunk cosine")
    q.add_argument("--json", action="store_true", help="print results (and answer) as JSON")
    q.set_defaults(func=cmd_query)

    e = sub.add_parser("eval", help="recall@k, MRR, nDCG@10 over labeled queries")
    _common(e, "bm25, dense and hybrid; repeat to pick several")
    e.add_argument("--qrels", required=True, help='JSONL: {"query", "relevant": [...]}')
    e.add_argument("--top-k", type=int, default=10,
                   help="k of recall@k (default: 10; nDCG is @10, MRR over the top "
                        "max(k, 10))")
    e.add_argument("--rerank", action="store_true",
                   help="also report hybrid+rerank (needs hybrid among the methods)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=cmd_eval, method=None)


def _common(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--store", required=True, help="index directory")
    # Free text, checked by the handler, so a typo gets the list of valid methods. Appended,
    # so a repeat is seen (eval runs each; query refuses) instead of the last one winning.
    p.add_argument("--method", action="append", default=None,
                   help=f"retrieval method, one of: {', '.join(METHODS)} (default: {default})")


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _open(store: str) -> Any:
    from llmlab.rag.pipeline import RagIndex

    return RagIndex.open(store)


def cmd_index(args: argparse.Namespace) -> int:
    from llmlab.rag.embed import get_embedder
    from llmlab.rag.ingest import IngestError
    from llmlab.rag.pipeline import RagIndex

    try:
        emb = get_embedder(args.embedder) if args.embedder else None
        idx = RagIndex.create(args.store, emb)
        stats = idx.index(args.paths, args.chunk_size, args.overlap, progress=True)
    except (IngestError, ValueError, OSError) as e:
        return _err(str(e))
    for msg in stats.errors:
        print(f"warning: skipped {msg}", file=sys.stderr)
    print(f"{args.store}: {stats.summary()}; {len(idx.store)} chunks in the index")
    return 1 if stats.errors and not (stats.added or stats.updated or stats.unchanged) else 0


def cmd_query(args: argparse.Namespace) -> int:
    from llmlab.rag.pipeline import check_method

    if args.method and len(args.method) > 1:
        return _err(f"--method given {len(args.method)} times ({', '.join(args.method)}); "
                    "a query retrieves with one (`llmlab rag eval` compares several)")
    method = args.method[0] if args.method else "hybrid"
    try:
        check_method(method)
        if args.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
        idx = _open(args.store)
        reranker = None
        if args.rerank:
            from llmlab.rag.rerank import LLMReranker

            reranker = LLMReranker()
        hits = idx.retrieve(args.question, method, args.top_k, reranker=reranker)
    except (ValueError, OSError) as e:
        return _err(str(e))
    out: dict[str, Any] = {
        "query": args.question, "method": method + ("+rerank" if args.rerank else ""),
        "results": [{"rank": h.rank, "chunk_id": h.chunk.chunk_id, "doc_id": h.chunk.doc_id,
                     "source": h.chunk.source, "score": h.score, "text": h.chunk.text}
                    for h in hits],
        "answer": None, "citations": [],
    }
    if not args.json:
        for h in hits:
            snippet = " ".join(h.chunk.text.split())[:160]
            print(f"{h.rank:>2}. {h.score:.4f}  {h.chunk.source}  ({h.chunk.chunk_id})\n"
                  f"    {snippet}")
    if args.answer:
        from llmlab.rag.answer import MIN_COSINE, AnswerStream

        stream = AnswerStream(args.question, hits, min_cosine=args.min_score or MIN_COSINE)
        if not args.json:
            print("\nanswer: ", end="", flush=True)
        for piece in stream:
            if not args.json:
                print(piece, end="", flush=True)
        a = stream.result
        assert a is not None
        out.update(a.to_json())
        if not args.json:
            print()
            for n, cid in a.citations:
                print(f"  [{n}] {hits[n - 1].chunk.source} ({cid})")
            if a.invalid:
                print(f"warning: removed citations of sources that weren't given: {a.invalid}",
                      file=sys.stderr)
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from llmlab.rag.evaluate import evaluate, format_table, load_qrels
    from llmlab.rag.pipeline import check_method

    # Each method once, in the order given.
    methods = list(dict.fromkeys(args.method or ["bm25", "dense", "hybrid"]))
    try:
        for m in methods:
            check_method(m)
        if args.rerank and "hybrid" not in methods:
            raise ValueError("--rerank reranks the hybrid results: add --method hybrid")
        qrels = load_qrels(args.qrels)
        idx = _open(args.store)
        reranker = None
        if args.rerank:
            from llmlab.rag.rerank import LLMReranker

            reranker = LLMReranker()
        res = evaluate(idx, qrels, methods, args.top_k, reranker, progress=not args.json)
    except (ValueError, OSError) as e:
        return _err(str(e))
    print(json.dumps(res, indent=1) if args.json else format_table(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m llmlab.rag.cli ...` is the same as `llmlab ...`."""
    from llmlab.cli import main as llmlab_main

    return llmlab_main(argv)


if __name__ == "__main__":
    sys.exit(main())
