"""`llmlab eval` end to end through the CLI, each checked against an outside computation:
`--adapter` perplexity against PEFT's own merged model in transformers, and the `rag:` task
against llmlab.rag's evaluate and against recall/MRR by definition and sklearn's nDCG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from .helpers import ROOT, cli, docs_text

RAG_DATA = ROOT / "tests" / "data" / "rag_pydocs"


def _metrics(path: Path) -> dict:
    rep = json.loads(path.read_text())
    assert rep["llmlab_version"] and rep["date"] and rep["seed"] == 0
    (res,) = rep["results"]
    return rep, res["metrics"]


def test_adapter_perplexity_equals_peft_merged_model(tiny_dir: Path, peft_adapter: Path,
                                                     tmp_path: Path) -> None:
    import peft
    import transformers

    text = tmp_path / "controlflow.txt"
    text.write_text(docs_text("controlflow"), encoding="utf-8")
    n_tok = 200  # one window: the reference is a single forward with labels
    args = ["eval", "--model", str(tiny_dir), "--task", f"perplexity:{text}", "--limit",
            str(n_tok), "--no-progress"]
    r = cli(*args, "--out", str(tmp_path / "base.json"))
    assert r.returncode == 0, r.stderr
    r = cli(*args, "--adapter", str(peft_adapter), "--out", str(tmp_path / "lora.json"))
    assert r.returncode == 0, r.stderr
    rep_base, base = _metrics(tmp_path / "base.json")
    rep_lora, lora = _metrics(tmp_path / "lora.json")
    assert rep_lora["adapter"] == str(peft_adapter) and rep_base["adapter"] is None

    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"))
    ids = torch.tensor([hf_tok(text.read_text(encoding="utf-8"))["input_ids"][:n_tok]])
    ref_base = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
        peft_adapter).merge_and_unload().eval()
    with torch.no_grad():
        want_base = ref_base.eval()(ids, labels=ids).loss.item()
        want_lora = merged(ids, labels=ids).loss.item()
    assert base["tokens"] == lora["tokens"] == n_tok - 1
    assert base["perplexity"] == pytest.approx(math.exp(want_base), rel=1e-4)
    assert lora["perplexity"] == pytest.approx(math.exp(want_lora), rel=1e-4)
    assert abs(lora["nll"] - base["nll"]) > 1e-3  # the adapter changed the numbers


def _subset(tmp_path: Path, n_docs: int = 12) -> tuple[Path, Path]:
    """The first `n_docs` labeled sections of the Python-docs set and their queries."""
    rows = [json.loads(x) for x in (RAG_DATA / "qrels.jsonl").read_text().splitlines() if x]
    rows = rows[:n_docs]
    docs = tmp_path / "docs"
    for row in rows:
        for rel in row["relevant"]:
            (docs / rel).parent.mkdir(parents=True, exist_ok=True)
            (docs / rel).write_bytes((RAG_DATA / "docs" / rel).read_bytes())
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return docs, qrels


def test_rag_task_matches_rag_evaluate_and_definitions(tmp_path: Path) -> None:
    from sklearn.metrics import ndcg_score

    from llmlab.rag.evaluate import evaluate, load_qrels
    from llmlab.rag.pipeline import RagIndex

    docs, qrels_path = _subset(tmp_path)
    store = tmp_path / "index"
    r = cli("rag", "index", str(docs), "--store", str(store), "--chunk-size", "128",
            "--overlap", "16")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rag.json"
    r = cli("eval", "--task", f"rag:{store}:{qrels_path}", "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "hybrid/ndcg@10=" in r.stdout
    _, got = _metrics(out)

    idx = RagIndex.open(store)
    qrels = load_qrels(qrels_path)
    lib = evaluate(idx, qrels, progress=False)
    assert got == {**{f"{m}/{k}": v for m, row in lib.items() for k, v in row.items()},
                   "n": len(qrels)}

    all_docs = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.txt"))
    for method in ("bm25", "dense", "hybrid"):
        recall, rr, ndcg = [], [], []
        for q in qrels:
            ranked: list[str] = []  # chunks -> documents, best chunk first
            for h in idx.retrieve(q.query, method=method, top_k=30, with_cosine=False):
                src = h.chunk.source.split("#L")[0]
                if src not in ranked:
                    ranked.append(src)
            ranked = ranked[:10]
            recall.append(len(set(ranked) & q.relevant) / len(q.relevant))
            rr.append(next((1 / (i + 1) for i, d in enumerate(ranked) if d in q.relevant), 0.0))
            # sklearn: relevance over every document, scores falling with rank.
            y_true = [[float(d in q.relevant) for d in all_docs]]
            # Unranked documents go last, relevant ones after the rest: with more than 10
            # documents, a relevant one that was not retrieved earns nothing, as by definition.
            y_score = [[float(len(ranked) - ranked.index(d)) if d in ranked else
                        -2.0 if d in q.relevant else -1.0 for d in all_docs]]
            ndcg.append(ndcg_score(y_true, y_score, k=10))
        n = len(qrels)
        assert got[f"{method}/recall@10"] == pytest.approx(sum(recall) / n)
        assert got[f"{method}/mrr"] == pytest.approx(sum(rr) / n)
        assert got[f"{method}/ndcg@10"] == pytest.approx(sum(ndcg) / n)
    assert got["hybrid/recall@10"] >= 0.8  # a working retriever on its own docs


def test_rag_task_bad_store_is_named(tmp_path: Path) -> None:
    _, qrels = _subset(tmp_path, 2)
    r = cli("eval", "--task", f"rag:{tmp_path / 'nope'}:{qrels}")
    assert r.returncode == 2 and "nope" in r.stderr
    r = cli("eval", "--task", f"rag:{tmp_path}:{tmp_path / 'missing.jsonl'}")
    assert r.returncode == 2 and "missing.jsonl" in r.stderr


def test_sampled_evaluation_is_deterministic_given_a_seed(tiny_dir: Path) -> None:
    """pass@k sampling (temperature 0.8) repeats exactly under one seed and moves with it."""
    from llmlab.eval.cli import load_model
    from llmlab.eval.tasks import EvalConfig, run_task

    lm = load_model(str(tiny_dir), None)

    def run(seed: int) -> dict:
        cfg = EvalConfig(limit=2, seed=seed, samples=3, max_new_tokens=12, progress=False)
        return run_task(lm, "humaneval", cfg)

    a, b, c = run(0), run(0), run(1)
    assert a["config"]["mode"] == "completion"  # no chat template: the base-model prompt
    assert a["config"]["temperature"] == 0.8 and a["metrics"]["samples_per_problem"] == 3
    assert a == b
    assert [s["output"] for s in a["samples"]] != [s["output"] for s in c["samples"]]


def test_sandbox_timeout_is_a_reported_failure() -> None:
    import time

    from llmlab.tasks.humaneval import score_programs
    from llmlab.tasks.sandbox import Limits

    t0 = time.monotonic()
    metrics, results = score_programs(["assert 1 + 1 == 2", "while True:\n    pass"], 1,
                                      Limits(timeout=2.0), workers=2)
    assert time.monotonic() - t0 < 15  # never hung
    assert [r.status for r in results] == ["passed", "timeout"]
    assert metrics["timeouts"] == 1 and metrics["pass@1"] == 0.5 and metrics["n"] == 2


def test_gen_task_text_metrics_match_the_libraries(tiny_dir: Path, tmp_path: Path) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    rows = [{"prompt": f"Summarise section {i} of the tutorial.", "reference": ref}
            for i, ref in enumerate(["The for statement iterates over a sequence.",
                                     "Use range() to iterate over numbers.",
                                     "Functions are defined with def."])]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "gen.json"
    r = cli("eval", "--model", str(tiny_dir), "--task", f"gen:{data}", "--max-new-tokens", "16",
            "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep, got = _metrics(out)
    samples = rep["results"][0]["samples"]
    preds = [s["output"] for s in samples]
    refs = [s["reference"] for s in samples]
    assert sorted(refs) == sorted(x["reference"] for x in rows) and got["n"] == 3
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = sum(sc.score(t, p)["rougeL"].fmeasure for t, p in zip(refs, preds, strict=True)) / 3
    assert got["rougeL"] == pytest.approx(want)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "reference": "r"}\n{"prompt": "q"}\n', encoding="utf-8")
    r = cli("eval", "--model", str(tiny_dir), "--task", f"gen:{bad}")
    assert r.returncode == 2 and 'bad.jsonl:2: expected a non-empty string "reference"' in r.stderr
