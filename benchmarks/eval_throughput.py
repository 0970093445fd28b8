"""Eval generation throughput: prompts/s for llmlab's batched KV-cache engine (what
`llmlab eval` uses) vs a loop over transformers' `generate`, one prompt at a time, on the same
model (SmolLM2-135M-Instruct exported with save_hf), same chat prompts, greedy, fp32.

    PYTHONPATH=. python benchmarks/eval_throughput.py [--n 200] [--hf-n 40] [--max-new-tokens 32]

The transformers loop runs on the first --hf-n prompts (it is the slow side; its per-prompt
rate is steady, so the subset measures it) - pass --hf-n 200 for the full set.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import emit, print_machine, stopwatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--hf-n", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print_machine(threads=a.threads)
    torch.set_num_threads(a.threads)

    import llmlab
    from llmlab.eval.generation import encode_prompts, generate
    from llmlab.tasks.base import sample
    from llmlab.tasks.trivia import TRIVIA_PROMPT, trivia_questions

    lm = llmlab.load("smollm2-135m-instruct")
    prompts = [TRIVIA_PROMPT.format(q=q.question) for q in sample(trivia_questions(), a.n, 0)]

    t0 = stopwatch()
    ours = generate(lm, prompts, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                    progress=False)
    t_ours = t0()

    from transformers import AutoModelForCausalLM

    from llmlab.weights.hf import save_hf

    with tempfile.TemporaryDirectory() as d:
        save_hf(lm.model, Path(d) / "m")
        hf = AutoModelForCausalLM.from_pretrained(Path(d) / "m").eval()
    ids = encode_prompts(lm, prompts[: a.hf_n], chat=True)
    eos = [lm.tokenizer.eos_id, lm.tokenizer.encode("<|im_end|>", allowed_special="all")[0]]
    agree = 0
    t0 = stopwatch()
    with torch.inference_mode():
        for i, p in enumerate(ids):
            out = hf.generate(torch.tensor([p]), max_new_tokens=a.max_new_tokens,
                              do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
            text = lm.tokenizer.decode([t for t in out[0, len(p):].tolist() if t not in eos])
            agree += text.strip() == ours[i].strip()
    t_hf = t0()

    res = {"prompts": a.n, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
           "threads": a.threads, "llmlab_prompts_per_s": a.n / t_ours,
           "hf_loop_prompts": a.hf_n, "hf_loop_prompts_per_s": a.hf_n / t_hf,
           "speedup": (a.n / t_ours) / (a.hf_n / t_hf),
           "greedy_text_agreement": f"{agree}/{a.hf_n}"}
    emit(res)


if __name__ == "__main__":
    main()
