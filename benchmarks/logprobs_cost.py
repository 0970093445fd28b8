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


def best(fn, repeat: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = stopwatch()
        fn()
        times.append(t())
    return min(times)


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
    for k in (None, 0, 5, 20):
        p = SamplingParams(max_new_tokens=a.new_tokens, temperature=0, logprobs=k)
        s = best(lambda p=p: complete(lm.model, lm.tokenizer, [ids], p), a.repeat)
        out[f"tok_s_logprobs_{k}"] = round(a.new_tokens / s, 1)
    for k in (0, 5, 20):
        out[f"ratio_{k}_vs_off"] = round(out[f"tok_s_logprobs_{k}"] / out["tok_s_logprobs_None"], 3)
    text = lm.tokenizer.encode(" ".join([PROMPT] * 40))[:512]
    for k in (0, 5):
        s = best(lambda k=k: prompt_logprobs(lm.model, text, k), a.repeat)
        out[f"score_tok_s_top{k}"] = round(len(text) / s)
    for key, v in out.items():
        print(f"{key}: {v}")
    emit(out)


if __name__ == "__main__":
    main()
