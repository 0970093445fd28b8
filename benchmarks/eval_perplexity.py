"""Perplexity and bits/byte of `llmlab eval --task perplexity:<corpus>` next to transformers'
loss on the same model (SmolLM2-135M-Instruct exported with save_hf), the same token ids and
the same sliding windows (the strided recipe of the transformers perplexity guide), fp32.

    PYTHONPATH=. python benchmarks/eval_perplexity.py [--corpus kjv --corpus pydocs]
        [--limit 8192] [--window 1024] [--stride 512] [--threads 1]

Prints one JSON line per corpus as it finishes: both sides' NLL/token, perplexity, bits per
byte, seconds; the last line holds them all.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import emit, print_machine, stopwatch


def hf_strided_nll(hf: Any, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Summed NLL and scored-token count by the transformers guide's recipe: each window's
    labels are -100 except the tokens no earlier window scored."""
    x_all = torch.tensor(ids)
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        x = x_all[begin:end][None]
        labels = x.clone()
        labels[:, : -(end - prev_end)] = -100
        with torch.inference_mode():
            loss = hf(x, labels=labels).loss.item()
        scored = int((labels[:, 1:] != -100).sum())
        total += loss * scored
        count += scored
        prev_end = end
        if end == len(ids):
            break
    return total, count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", action="append", default=None, help="kjv | pydocs | a file")
    ap.add_argument("--limit", type=int, default=8192, help="tokens from the start of each")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print_machine(threads=a.threads)
    torch.set_num_threads(a.threads)

    import llmlab
    from llmlab.eval.tasks import EvalConfig, _perplexity_text, run_task
    from llmlab.weights.hf import save_hf

    lm = llmlab.load("smollm2-135m-instruct")
    lm.model.eval()
    with tempfile.TemporaryDirectory() as d:
        save_hf(lm.model, Path(d) / "m")
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(Path(d) / "m", dtype=torch.float32).eval()
    cfg = EvalConfig(limit=a.limit, window=a.window, stride=a.stride, progress=False)
    results = []
    for corpus in a.corpus or ["kjv", "pydocs"]:
        t = stopwatch()
        ours = run_task(lm, f"perplexity:{corpus}", cfg)["metrics"]
        t_ours = t()
        # The same ids and bytes run_perplexity scored (its --limit prefix rule).
        text = _perplexity_text(corpus)[: 64 * (a.limit + 1)]
        ids = lm.tokenizer.encode(text, allowed_special="none")[: a.limit]
        n_bytes = len(lm.tokenizer.decode(ids).encode("utf-8"))
        t = stopwatch()
        nll, n = hf_strided_nll(hf, ids, a.window, a.stride)
        t_hf = t()
        ref = {"nll_per_token": nll / n, "perplexity": math.exp(nll / n),
               "bits_per_byte": nll / (n_bytes * math.log(2)), "tokens": n, "bytes": n_bytes}
        results.append({"corpus": corpus, "window": a.window, "stride": a.stride,
                        "llmlab": ours, "transformers": ref,
                        "abs_diff_nll_per_token": abs(ours["nll"] - ref["nll_per_token"]),
                        "seconds": {"llmlab": round(t_ours, 1), "transformers": round(t_hf, 1)}})
        print(json.dumps(results[-1]), flush=True)
    emit({"threads": a.threads, "limit": a.limit, "corpora": results})


if __name__ == "__main__":
    main()
