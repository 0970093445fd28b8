"""SmolLM2-135M decode and prefill speed on CPU: llmlab vs transformers' `generate`, same weights,
same run, same thread count.

    .venv/bin/python benchmarks/generate_cpu.py [--threads 2] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.generate.engine import iter_decode  # noqa: E402
from llmlab.generate.sampling import SamplingParams  # noqa: E402
from llmlab.model.quant import quantize_int8_  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeat))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ours(model, ids: list[int], n_new: int, repeat: int) -> float:
    params = SamplingParams(max_new_tokens=n_new, temperature=0)  # no stop token: exactly n_new

    def go():
        for _ in iter_decode(model, [ids], params):
            pass

    return n_new / best_of(go, repeat)


def prefill(model, n: int, repeat: int, hf: bool = False) -> float:
    ids = torch.randint(100, 40000, (1, n), generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def go():
        model(ids) if hf else model(ids, last_only=True)

    return n / best_of(go, repeat)


def theirs(model, ids: list[int], n_new: int, repeat: int) -> float:
    x = torch.tensor([ids])

    @torch.inference_mode()
    def go():
        model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=2,
        )

    return n_new / best_of(go, repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    from llmlab.weights.registry import _smollm2_file

    lm = llmlab.load("smollm2-135m-instruct")
    ids = lm.tokenizer.encode(PROMPT)
    p = _smollm2_file()
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    hf.eval()
    rows = []
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = copy.deepcopy(lm.model).to(dt)
        h = copy.deepcopy(hf).to(dt)
        rows.append(
            {
                "weights": name,
                "llmlab_decode": ours(m, ids, a.new_tokens, a.repeat),
                "hf_decode": theirs(h, ids, a.new_tokens, a.repeat),
                "llmlab_prefill": prefill(m, a.prefill, a.repeat),
                "hf_prefill": prefill(h, a.prefill, a.repeat, hf=True),
            }
        )
        del m, h
    q = quantize_int8_(copy.deepcopy(lm.model))
    rows.append(
        {
            "weights": "int8 (llmlab) vs fp32 (hf)",
            "llmlab_decode": ours(q, ids, a.new_tokens, a.repeat),
            "hf_decode": rows[0]["hf_decode"],
            "llmlab_prefill": prefill(q, a.prefill, a.repeat),
            "hf_prefill": rows[0]["hf_prefill"],
        }
    )
    print(
        f"# {platform.processor() or platform.machine()}, {a.threads} threads, torch "
        f"{torch.__version__}, {a.new_tokens} new tokens, prefill {a.prefill}"
    )
    print(
        "| weights | llmlab decode tok/s | transformers decode tok/s | ratio | "
        "llmlab prefill tok/s | transformers prefill tok/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['weights']} | {r['llmlab_decode']:.1f} | {r['hf_decode']:.1f} | "
            f"{r['llmlab_decode'] / r['hf_decode']:.2f}x | {r['llmlab_prefill']:.0f} | "
            f"{r['hf_prefill']:.0f} | {r['llmlab_prefill'] / r['hf_prefill']:.2f}x |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
