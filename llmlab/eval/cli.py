"""`llmlab eval`: benchmark a model; `llmlab eval compare`: table + chart of reports;
`llmlab eval judge`: pairwise LLM-as-judge.

Handlers import the library inside, so `llmlab --help` does not load torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmlab.cliutil import DTYPES, guard
from llmlab.eval.judge import add_judge_command
from llmlab.eval.report import (
    compare_table,
    label,
    load_report,
    log_progress,
    make_report,
    plot_compare,
    report_paths,
    write_report,
)
from llmlab.tasks.base import KEEP_SAMPLES

DEFAULT_MODEL = "smollm2-135m-instruct"


def load_model(name: str, adapter: str | None, dtype: str = "fp32", threads: int | None = None
               ) -> Any:
    """The model to evaluate: `llmlab generate`'s loader (an adapter is applied, and LoRA/DoRA
    merged, in fp32 before any cast to bf16/int8)."""
    import torch

    from llmlab.lm import load_lm

    if threads:
        torch.set_num_threads(threads)
    lm = load_lm(name, dtype, adapter)
    if getattr(lm, "kind", "causal-lm") != "causal-lm":
        raise ValueError(f"model {name!r} is a {lm.kind}, not a causal LM: it can't be evaluated")
    lm.model.eval()
    return lm


def check_args(a: argparse.Namespace) -> list[str]:
    """The task specs (--task, repeated or comma-separated), checked with the other values
    that fail before a model loads; the playground checks a run's options with this too."""
    from llmlab.eval.tasks import TASK_FORMS, parse_task

    tasks = [t.strip() for spec in a.task for t in spec.split(",")]  # '' fails in parse_task
    if not tasks:
        raise ValueError(f"no tasks given: pass --task (repeatable): {', '.join(TASK_FORMS)}")
    for t in tasks:
        parse_task(t)
    for flag, v, lo in (("--limit", a.limit, 1), ("--keep-examples", a.keep_examples, 0),
                        ("--samples", a.samples, 1), ("--workers", a.workers, 1),
                        ("--batch-size", a.batch_size, 1)):
        if v is not None and v < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {v}")
    return tasks


def cmd_eval(a: argparse.Namespace) -> int:
    from llmlab.eval.tasks import NEEDS_MODEL, EvalConfig, parse_task, run_task

    tasks = check_args(a)  # fail on a bad task before loading the model
    names = [parse_task(t)[0] for t in tasks]
    out, progress = report_paths(a.out)
    cfg = EvalConfig(limit=a.limit, seed=a.seed, batch_size=a.batch_size,
                     max_new_tokens=a.max_new_tokens, samples=a.samples,
                     temperature=a.temperature, window=a.window, stride=a.stride,
                     workers=a.workers, progress=not a.no_progress,
                     keep=a.keep_examples or None, extra={"timeout": a.timeout})
    lm = load_model(a.model, a.adapter, a.dtype, a.threads) if NEEDS_MODEL & set(names) else None
    results = []
    for i, spec in enumerate(tasks):
        log_progress(progress, {"step": i, "of": len(tasks), "task": spec, "event": "start"})
        r = run_task(lm, spec, cfg)
        results.append(r)
        log_progress(progress, {"step": i + 1, "of": len(tasks), "task": spec, "event": "done",
                                "metrics": r["metrics"], "ci95": r["ci95"]})
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r["metrics"].items())
        print(f"{spec}: {shown}")
    config = {k: v for k, v in vars(cfg).items() if k != "progress"}
    config["dtype"] = a.dtype
    report = make_report(a.model, a.adapter, a.seed, results, config)
    if out:
        print(f"wrote {write_report(report, out)}", file=sys.stderr)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    if len(a.reports) < 1:
        raise ValueError("compare needs at least one report")
    reps = [(label(r, p), r) for p, r in ((p, load_report(p)) for p in a.reports)]
    # Same model twice (e.g. two adapters' runs): tell columns apart by file name.
    names = [n for n, _ in reps]
    if len(set(names)) < len(names):
        reps = [(Path(p).stem, r) for p, (_, r) in zip(a.reports, reps, strict=True)]
    table, rows = compare_table(reps)
    print(table)
    out = a.plot or str(Path(a.reports[0]).with_name("compare.png"))
    print(f"wrote {plot_compare([n for n, _ in reps], rows, out)}", file=sys.stderr)
    return 0


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name or directory (default: {DEFAULT_MODEL})")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory (llmlab.peft)")
    p.add_argument("--task", action="append", default=[],
                   help="perplexity:<corpus|file> | arithmetic | trivia | "
                        "humaneval[:chat|completion] | gen:<pydocs|file.jsonl> | "
                        "rag:<store>:<qrels> (repeatable, or several comma-separated; at "
                        "least one)")
    p.add_argument("--limit", type=int, default=None,
                   help="items per task (tokens for perplexity) (default: all)")
    p.add_argument("--out", default=None,
                   help="JSON report path; an existing directory gets report.json and "
                        "metrics.jsonl (progress, one record as each task starts and ends)")
    p.add_argument("--keep-examples", type=int, default=KEEP_SAMPLES,
                   help="per-item records (prompt, output, verdict) kept per task; 0: all "
                        f"(default: {KEEP_SAMPLES}; intervals always use every item)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds sampling and item selection (default: 0)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="prompts per generation batch (default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation length cap (default: per task)")
    p.add_argument("--samples", type=int, default=1,
                   help="humaneval completions per problem (default: 1)")
    p.add_argument("--temperature", type=float, default=None,
                   help="default 0 (greedy), 0.8 with --samples > 1")
    p.add_argument("--window", type=int, default=1024,
                   help="perplexity window in tokens (default: 1024)")
    p.add_argument("--stride", type=int, default=512,
                   help="perplexity stride in tokens (default: 512)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="sandbox seconds per program (default: 5.0)")
    p.add_argument("--workers", type=int, default=2,
                   help="sandbox programs at once (default: 2)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES,
                   help="weights: fp32, bf16, or weight-only int8/int4 (int8 fastest on CPU) "
                        "(default: fp32)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on benchmark tasks")
    _add_eval_args(p)
    p.set_defaults(fn=guard(cmd_eval), func=guard(cmd_eval))
    sub = p.add_subparsers(dest="eval_action", metavar="{compare,judge}")
    c = sub.add_parser("compare", help="table and bar chart (PNG) of eval reports")
    c.add_argument("reports", nargs="+", help="JSON reports from llmlab eval --out")
    c.add_argument("--plot", default=None, help="PNG path (default: compare.png beside the first)")
    c.set_defaults(fn=guard(cmd_compare), func=guard(cmd_compare))
    add_judge_command(sub, guard, load_model)
