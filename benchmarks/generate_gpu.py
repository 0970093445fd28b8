"""SmolLM2-135M decode speed on a GPU: llmlab (static cache, torch.compile, CUDA graph) vs
transformers' `generate`, bf16, batch 1 and batch 32, same weights, same run.

    python benchmarks/generate_gpu.py [--new-tokens 256] [--batches 1 32] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.generate.sampling import SamplingParams  # noqa: E402
from llmlab.generate.static import StaticDecoder  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def ours(model, ids: list[int], batch: int, n_new: int, compile: bool) -> float:
    dec = StaticDecoder(model, batch, len(ids) + n_new + 1, compile=compile, cuda_graph=True)
    params = SamplingParams(max_new_tokens=n_new, temperature=0)

    def go():
        for _ in dec.generate([ids] * batch, params):
            pass

    go()  # compile + capture
    return batch * n_new / min(timed(go) for _ in range(3))


def theirs(model, ids: list[int], batch: int, n_new: int) -> float:
    x = torch.tensor([ids] * batch, device="cuda")

    def go():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                       min_new_tokens=n_new, do_sample=False, pad_token_id=2)

    go()
    return batch * n_new / min(timed(go) for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this benchmark needs a GPU")
    from transformers import AutoModelForCausalLM

    from llmlab.weights.registry import _smollm2_file

    lm = llmlab.load("smollm2-135m-instruct", dtype=torch.bfloat16, device="cuda")
    ids = lm.tokenizer.encode(PROMPT)
    p = _smollm2_file()
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                              dtype=torch.bfloat16).cuda().eval()
    rows = []
    with torch.inference_mode():
        for b in a.batches:
            r = {"batch": b, "llmlab": ours(lm.model, ids, b, a.new_tokens, not a.no_compile),
                 "transformers": theirs(hf, ids, b, a.new_tokens)}
            rows.append(r)
            print(f"batch {b}: llmlab {r['llmlab']:.0f} tok/s, transformers "
                  f"{r['transformers']:.0f} tok/s, ratio {r['llmlab'] / r['transformers']:.1f}x",
                  flush=True)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, "
          f"{a.new_tokens} new tokens")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
