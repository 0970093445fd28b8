"""What logprobs cost: SmolLM2-135M decoding at batch 1 on CPU through `complete()`, with
logprobs off (the peer, same run) and on (the chosen token's, and its top 5 / 20), and
prompt scoring (`prompt_logprobs`, what /v1/completions' echo returns) in tokens/s.

    .venv/bin/python benchmarks/logprobs_cost.py [--dtype int8] [--new-tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit, print_machine, stopwatch  # noqa: E402

from llmlab.generate.engine import complete  # noqa: E402
from llmlab.generate.sampling import SamplingParams  # noqa: E402
from llmlab.generate.score import prompt_logprobs  # noqa: E402
from llmlab.lm import load_lm  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def best(fns: dict, repeat: int) -> dict:
    """Best time of each fn, the fns interleaved round by round, so that a load that drifts
    during the run (a shared box) weighs on every side alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = stopwatch()
            fn()
            times[k].append(t())
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="int8", choices=["fp32", "bf16", "int8", "int4"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print_machine(dtype=a.dtype)
    lm = load_lm("smollm2-135m-instruct", a.dtype)
    ids = lm.tokenizer.encode(PROMPT)
    out: dict = {"dtype": a.dtype, "new_tokens": a.new_tokens}
    def gen(k: int | None):  # noqa: ANN202
        p = SamplingParams(max_new_tokens=a.new_tokens, temperature=0, logprobs=k)
        return lambda: complete(lm.model, lm.tokenizer, [ids], p)

    secs = best({k: gen(k) for k in (None, 0, 5, 20)}, a.repeat)
    for k, s in secs.items():
        out[f"tok_s_logprobs_{k}"] = round(a.new_tokens / s, 1)
    for k in (0, 5, 20):
        out[f"ratio_{k}_vs_off"] = round(secs[None] / secs[k], 3)
    text = lm.tokenizer.encode(" ".join([PROMPT] * 40))[:512]
    secs = best({k: (lambda k=k: prompt_logprobs(lm.model, text, k)) for k in (0, 5)}, a.repeat)
    for k, s in secs.items():
        out[f"score_tok_s_top{k}"] = round(len(text) / s)
    for key, v in out.items():
        print(f"{key}: {v}")
    emit(out)


if __name__ == "__main__":
    main()
