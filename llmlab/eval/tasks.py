"""Evaluation tasks: `perplexity:<corpus|file>`, `arithmetic`, `trivia`, `humaneval`,
`gen:<pydocs|file.jsonl>` (BLEU, ROUGE, EM/F1 against references), `rag:<store>:<qrels>`.
Each returns {"task", "config", "metrics", "samples"}."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlab.data.jsonl import read_jsonl
from llmlab.eval.generation import generate, perplexity_report, sliding_nll
from llmlab.eval.intervals import intervals
from llmlab.tasks import humaneval as he
from llmlab.tasks.arithmetic import ARITHMETIC
from llmlab.tasks.base import EvalConfig, sample
from llmlab.tasks.pydocs import PYDOCS, evaluate_references
from llmlab.tasks.trivia import TRIVIA

TASK_FORMS = ("perplexity:<corpus|file>", "arithmetic", "trivia", "humaneval[:chat|completion]",
              "gen:<pydocs|file.jsonl>", "rag:<store>:<qrels>")


def parse_task(spec: str) -> tuple[str, list[str]]:
    """'rag:store:qrels' -> ('rag', ['store', 'qrels']), validating the shape."""
    name, *args = spec.split(":")
    arity = {"perplexity": {1}, "arithmetic": {0}, "trivia": {0}, "humaneval": {0, 1},
             "gen": {1}, "rag": {2}}
    if name not in arity:
        raise ValueError(f"unknown task {spec!r}: valid tasks are {', '.join(TASK_FORMS)}")
    if name in ("perplexity", "gen") and len(args) > 1:
        args = [":".join(args)]  # a file path containing ':'
    form = next(f for f in TASK_FORMS if f.split(":")[0].split("[")[0] == name)
    if len(args) not in arity[name] or any(not a for a in args):
        raise ValueError(f"task {spec!r} must be written {form}")
    if name == "humaneval" and args and args[0] not in he.MODES:
        raise ValueError(f"task {spec!r} must be written {form}")
    return name, args




# ---- perplexity ----------------------------------------------------------------------------
def _perplexity_text(source: str) -> str:
    from llmlab.data.corpora import CORPORA, corpus_text

    if source in CORPORA:
        return corpus_text(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"perplexity source {source!r} is neither a corpus ({', '.join(CORPORA)}) "
                         "nor a file")
    return path.read_text(encoding="utf-8-sig")


def run_perplexity(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    text = _perplexity_text(args[0])
    if cfg.limit is not None:
        # --limit counts tokens here; no token spans 64 characters, so encoding this prefix
        # gives the same first `limit` tokens without tokenizing a whole corpus.
        text = text[: 64 * (cfg.limit + 1)]
    ids = lm.tokenizer.encode(text, allowed_special="none")
    if cfg.limit is not None:
        ids = ids[: cfg.limit]
        text = lm.tokenizer.decode(ids)  # bits per byte over the bytes actually scored
    window = min(cfg.window, lm.cfg.max_seq_len)
    stride = min(cfg.stride, window)
    nll, n = sliding_nll(lm.model, ids, window, stride, progress=cfg.progress)
    metrics = perplexity_report(nll, n, len(text.encode("utf-8")))
    return {"config": {"source": args[0], "window": window, "stride": stride,
                       "limit_tokens": cfg.limit}, "metrics": metrics, "samples": []}


# ---- question answering: the Tasks' own evaluate ----------------------------------------
def run_arithmetic(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    return ARITHMETIC.evaluate(lm, cfg, generate)


def run_trivia(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    return TRIVIA.evaluate(lm, cfg, generate)


# ---- reference-based generation ------------------------------------------------------------
def _gen_items(source: str) -> list[tuple[str, str]]:
    """(prompt, reference) pairs: the bundled `pydocs` set (the held-out side of the SFT
    pydocs split, so SFT never trained on it) or a JSONL file of {"prompt", "reference"}."""

    if source == "pydocs":
        return PYDOCS.pairs(PYDOCS.examples("test", seed=None))
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"gen source {source!r} is neither a bundled set (pydocs) nor a file")
    items = []
    for n, row in read_jsonl(path):
        for key in ("prompt", "reference"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or \
                    not row[key].strip():
                raise ValueError(f'{path}:{n}: expected a non-empty string "{key}"')
        items.append((row["prompt"], row["reference"]))
    if not items:
        raise ValueError(f"{path}: no rows")
    return items


def run_gen(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    if args[0] == "pydocs":
        return PYDOCS.evaluate(lm, cfg, generate)
    items = sample(_gen_items(args[0]), cfg.limit, cfg.seed)
    return evaluate_references(lm, items, args[0], cfg, generate)


# ---- HumanEval -----------------------------------------------------------------------------
def run_humaneval(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    return he.HUMANEVAL.evaluate(lm, cfg, generate, args[0] if args else None)


# ---- RAG -----------------------------------------------------------------------------------
def run_rag(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    from llmlab.rag.evaluate import evaluate, load_qrels
    from llmlab.rag.pipeline import RagIndex

    store, qrels_path = args
    qrels = load_qrels(qrels_path)
    if cfg.limit is not None:
        qrels = qrels[: cfg.limit]
    results = evaluate(RagIndex.open(store), qrels, progress=cfg.progress)
    metrics = {f"{m}/{k}": v for m, row in results.items() for k, v in row.items()}
    metrics["n"] = len(qrels)
    return {"config": {"store": store, "qrels": qrels_path}, "metrics": metrics, "samples": []}


RUNNERS: dict[str, Callable[[Any, list[str], EvalConfig], dict[str, Any]]] = {
    "perplexity": run_perplexity, "arithmetic": run_arithmetic, "trivia": run_trivia,
    "humaneval": run_humaneval, "gen": run_gen, "rag": run_rag,
}
NEEDS_MODEL = {"perplexity", "arithmetic", "trivia", "humaneval", "gen"}


def run_task(lm: Any, spec: str, cfg: EvalConfig) -> dict[str, Any]:
    """One task's result: its metrics, their 95% intervals ("ci95", from every item), and
    the first `cfg.keep` per-item records (prompt, output, verdict)."""
    name, args = parse_task(spec)
    out = RUNNERS[name](lm, args, cfg)
    ci = intervals(spec, out["metrics"], out["samples"], cfg.seed)
    kept = out["samples"] if cfg.keep is None else out["samples"][: cfg.keep]
    return {"task": spec, **out, "ci95": ci, "samples": kept}
