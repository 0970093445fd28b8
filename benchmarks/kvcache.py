"""What the KV cache saves: SmolLM2-135M (fp32, CPU, batch 1, greedy) generating N tokens
after a P-token prompt, with the cache and with full recompute at every step, through
llmlab.explain.kvcache and, as the peer in the same run, through transformers' generate on
the HF export (use_cache=True / False). Reports ms per decode token (prefill
excluded, best of --repeat interleaved rounds) and each side's recompute / cached ratio.

    .venv/bin/python benchmarks/kvcache.py [--prompt-tokens 64] [--new-tokens 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import emit, print_machine, stopwatch  # noqa: E402

from llmlab.data.corpora import pydocs_text  # noqa: E402
from llmlab.explain.kvcache import time_cache  # noqa: E402
from llmlab.lm import load_lm  # noqa: E402
from llmlab.weights.hf import save_hf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print_machine(threads=torch.get_num_threads())
    lm = load_lm("smollm2-135m-instruct", "fp32")
    ids = lm.tokenizer.encode(pydocs_text()[:4000])[: a.prompt_tokens]
    import transformers

    with tempfile.TemporaryDirectory() as d:
        path = save_hf(lm.model, Path(d) / "smol", lm.tokenizer)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, local_files_only=True).eval()
    x = torch.tensor([ids])

    def hf_ms(cache: bool) -> tuple[float, list[int]]:
        """ms per decode token: N new tokens minus a 1-token run (the prefill)."""
        with torch.no_grad():
            t = stopwatch()
            hf.generate(x, max_new_tokens=1, do_sample=False, use_cache=cache)
            pre = t()
            t = stopwatch()
            out = hf.generate(x, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                              do_sample=False, use_cache=cache)
            total = t()
        return 1000 * (total - pre) / (a.new_tokens - 1), out[0, len(ids):].tolist()

    hf_ms(True)  # warm-up
    # Rounds interleave the four sides, best of each kept: a load that drifts during the run
    # (a shared box) weighs on every side alike.
    runs: dict[str, list[float]] = {}
    same = True
    for _ in range(a.repeat):
        ours = time_cache(lm, ids, a.new_tokens)
        (c, tc), (f, tf) = hf_ms(True), hf_ms(False)
        same &= ours.same_tokens and tc == tf
        for k, v in [("llmlab cached", sum(ours.cached_ms[1:]) / (a.new_tokens - 1)),
                     ("llmlab recompute", sum(ours.recompute_ms[1:]) / (a.new_tokens - 1)),
                     ("transformers use_cache=True", c), ("transformers use_cache=False", f)]:
            runs.setdefault(k, []).append(v)
    per = {k: min(v) for k, v in runs.items()}
    emit({"prompt_tokens": len(ids), "new_tokens": a.new_tokens,
          "ms_per_decode_token": {k: round(v, 1) for k, v in per.items()},
          "llmlab recompute/cached": round(per["llmlab recompute"] / per["llmlab cached"], 2),
          "transformers recompute/cached": round(per["transformers use_cache=False"]
                                                 / per["transformers use_cache=True"], 2),
          "llmlab cached / transformers cached": round(per["llmlab cached"]
                                                       / per["transformers use_cache=True"], 2),
          "same_tokens": same})


if __name__ == "__main__":
    main()
