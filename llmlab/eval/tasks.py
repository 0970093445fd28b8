"""Evaluation tasks: `perplexity:<corpus|file>`, `arithmetic`, `trivia`, `humaneval`,
`gen:<pydocs|file.jsonl>` (BLEU, ROUGE, EM/F1 against references), `rag:<store>:<qrels>`.
Each returns {"task", "config", "metrics", "samples"}."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.data.jsonl import read_jsonl
from llmlab.eval import datasets as ds
from llmlab.eval import humaneval as he
from llmlab.eval.generation import generate, perplexity_report, sliding_nll
from llmlab.eval.metrics import answer_match, exact_match, final_number, mean_pass_at_k, token_f1
from llmlab.eval.sandbox import Limits, SandboxResult, run_many
from llmlab.eval.text import text_metrics

TASK_FORMS = ("perplexity:<corpus|file>", "arithmetic", "trivia", "humaneval[:chat|completion]",
              "gen:<pydocs|file.jsonl>", "rag:<store>:<qrels>")
KEEP_SAMPLES = 20  # per-item records stored in a report


@dataclass
class EvalConfig:
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int | None = None  # task default when None
    samples: int = 1  # humaneval completions per problem (pass@k needs >= k)
    temperature: float | None = None  # 0 for one sample, 0.8 for several
    window: int = 1024  # perplexity
    stride: int = 512
    workers: int = 2  # sandbox processes at once
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


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


def _limit(items: list[Any], cfg: EvalConfig) -> list[Any]:
    return ds.sample(items, cfg.limit, cfg.seed)


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


# ---- question answering --------------------------------------------------------------------
ARITH_PROMPT = ("Solve this word problem. Think step by step, then finish with "
                "'The answer is N.'\n\n{q}")
TRIVIA_PROMPT = "Answer the trivia question with just the answer, no explanation.\n\n{q}"


def run_arithmetic(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    probs = ds.arithmetic_problems(cfg.limit or 200, split="test", seed=cfg.seed)
    outs = generate(lm, [ARITH_PROMPT.format(q=p.question) for p in probs],
                    max_new_tokens=cfg.max_new_tokens or 160, seed=cfg.seed,
                    batch_size=cfg.batch_size, progress=cfg.progress, desc="arithmetic")
    got = [final_number(o) for o in outs]
    ok = [g is not None and abs(g - p.target) < 1e-6 for g, p in zip(got, probs, strict=True)]
    samples = [{"question": p.question, "target": p.target, "output": o, "parsed": g,
                "correct": c} for p, o, g, c in zip(probs, outs, got, ok, strict=True)]
    return {"config": {"split": "test", "n": len(probs)},
            "metrics": {"accuracy": sum(ok) / len(ok), "n": len(ok),
                        "unparsed": sum(g is None for g in got)},
            "samples": samples[:KEEP_SAMPLES]}


def run_trivia(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    qs = _limit(ds.trivia_questions(), cfg)
    outs = generate(lm, [TRIVIA_PROMPT.format(q=q.question) for q in qs],
                    max_new_tokens=cfg.max_new_tokens or 24, seed=cfg.seed,
                    batch_size=cfg.batch_size, progress=cfg.progress, desc="trivia")
    ok = [answer_match(o, q.answers) for o, q in zip(outs, qs, strict=True)]
    em = [max(exact_match(o, a) for a in q.answers) for o, q in zip(outs, qs, strict=True)]
    f1 = [max(token_f1(o, a) for a in q.answers) for o, q in zip(outs, qs, strict=True)]
    n = len(qs)
    samples = [{"question": q.question, "answers": q.answers, "output": o, "correct": c}
               for q, o, c in zip(qs, outs, ok, strict=True)]
    return {"config": {"lists": list(ds.TRIVIA_LISTS), "split": "test", "n": n},
            "metrics": {"accuracy": sum(ok) / n, "exact_match": sum(em) / n,
                        "f1": sum(f1) / n, "n": n},
            "samples": samples[:KEEP_SAMPLES]}


# ---- reference-based generation ------------------------------------------------------------
def _gen_items(source: str) -> list[tuple[str, str]]:
    """(prompt, reference) pairs: the bundled `pydocs` set (the held-out side of the SFT
    pydocs split, so SFT never trained on it) or a JSONL file of {"prompt", "reference"}."""

    if source == "pydocs":
        from llmlab.train.sft_data import pydocs_examples

        return [(e["question"], e["messages"][1]["content"]) for e in pydocs_examples("test")]
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
    items = _limit(_gen_items(args[0]), cfg)
    outs = generate(lm, [p for p, _ in items], max_new_tokens=cfg.max_new_tokens or 128,
                    seed=cfg.seed, batch_size=cfg.batch_size, progress=cfg.progress,
                    desc="gen")
    metrics: dict[str, Any] = {**text_metrics(outs, [r for _, r in items]), "n": len(items)}
    samples = [{"prompt": p, "reference": r, "output": o}
               for (p, r), o in zip(items, outs, strict=True)]
    return {"config": {"source": args[0], "n": len(items)}, "metrics": metrics,
            "samples": samples[:KEEP_SAMPLES]}


# ---- HumanEval -----------------------------------------------------------------------------
def score_programs(programs: list[str], k: int, limits: Limits, workers: int
                   ) -> tuple[dict[str, Any], list[SandboxResult]]:
    """Run `k` programs per problem (consecutive) in the sandbox: pass@1/10/100 (those with
    k >= j), and how many timed out; a timeout is a failure, counted, never a hang."""
    results = run_many(programs, limits, workers=workers)
    n = len(programs) // k
    counts = [(k, sum(r.passed for r in results[i * k : (i + 1) * k])) for i in range(n)]
    metrics: dict[str, Any] = {f"pass@{j}": mean_pass_at_k(counts, j) for j in (1, 10, 100)
                               if j <= k}
    metrics.update(n=n, samples_per_problem=k,
                   timeouts=sum(r.status == "timeout" for r in results))
    return metrics, results


def run_humaneval(lm: Any, args: list[str], cfg: EvalConfig) -> dict[str, Any]:
    probs = he.humaneval_problems()
    if cfg.limit is not None:
        probs = probs[: cfg.limit]  # first N: comparable across runs and papers' subsets
    k = cfg.samples
    if k < 1:
        raise ValueError(f"--samples must be >= 1, got {k}")
    mode = he.mode_for(lm, args[0] if args else None)
    temp = cfg.temperature if cfg.temperature is not None else (0.0 if k == 1 else 0.8)
    rows = [p for p in probs for _ in range(k)]
    common = dict(max_new_tokens=cfg.max_new_tokens or (384 if mode == "chat" else 256),
                  temperature=temp, seed=cfg.seed, batch_size=cfg.batch_size,
                  progress=cfg.progress, desc=f"humaneval ({mode})")
    if mode == "chat":
        outs = generate(lm, [he.CHAT_PROMPT.format(prompt=p["prompt"]) for p in rows],
                        prefill=he.CHAT_PREFILL, stop=he.CHAT_STOPS, **common)
        solved = [he.chat_solution(p, he.CHAT_PREFILL + o) for p, o in zip(rows, outs,
                                                                             strict=True)]
    else:
        outs = generate(lm, [p["prompt"] for p in rows], chat=False, stop=he.COMPLETION_STOPS,
                        **common)
        solved = [(he.completion_solution(p, o), "completion") for p, o in zip(rows, outs,
                                                                                strict=True)]
    limits = Limits(timeout=cfg.extra.get("timeout", 5.0))
    metrics, results = score_programs(
        [he.program(p, s) for p, (s, _) in zip(rows, solved, strict=True)], k, limits,
        cfg.workers)
    if mode == "chat":  # how the replies were put together with the stubs
        metrics.update(whole_function=sum(f == "function" for _, f in solved),
                       body_only=sum(f == "body" for _, f in solved))
    samples = [{"task_id": p["task_id"], "output": o, "form": f, "solution": s,
                "status": r.status, "stderr_tail": r.stderr[-300:]}
               for p, o, (s, f), r in zip(rows, outs, solved, results, strict=True)]
    config = {"mode": mode, "samples": k, "temperature": temp, "timeout_s": limits.timeout,
              "max_new_tokens": common["max_new_tokens"]}
    if mode == "chat":
        config.update(prompt=he.CHAT_PROMPT, prefill=he.CHAT_PREFILL, stops=he.CHAT_STOPS)
    else:
        config.update(stops=he.COMPLETION_STOPS)
    return {"config": config, "metrics": metrics, "samples": samples[:KEEP_SAMPLES]}


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
    name, args = parse_task(spec)
    out = RUNNERS[name](lm, args, cfg)
    return {"task": spec, **out}
