"""SmolLM2-135M decode and prefill speed on CPU: llmlab vs transformers' `generate`, same weights,
same run, same thread count; and vs llama.cpp on the same Q4_1 GGUF file when llama-cpp-python
is installed (it is not a dependency; it builds from source in a few minutes):

    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install llama-cpp-python==0.3.36
    .venv/bin/python benchmarks/generate_cpu.py [--threads 2] [--new-tokens 128]

llama.cpp is timed as the issue measured it: through llama-cpp-python's `generate` loop (one
Python call per token, like ours), greedy, the same prompt ids, exactly `--new-tokens` tokens,
with flash attention off and on; prefill is one `eval` of the same 512 ids. Fidelity: on
KJV text, teacher-forced, how often each quantized decoder predicts the same next token as
our fp32 model, which holds the GGUF's weights dequantised exactly.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import emit, print_machine, stopwatch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.data.corpora import corpus_text  # noqa: E402
from llmlab.generate.engine import iter_decode  # noqa: E402
from llmlab.generate.fast.cpu import LeanDecoder  # noqa: E402
from llmlab.generate.sampling import SamplingParams  # noqa: E402
from llmlab.model.quant import quantize_int4_, quantize_int8_  # noqa: E402
from llmlab.settings import speed_override  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeat))


def _timed(fn) -> float:
    t = stopwatch()
    fn()
    return t()


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


def llama_cpp(path: str, ids: list[int], n_new: int, n_prefill: int, threads: int,
              repeat: int, flash: bool, text: list[int]) -> dict[str, Any] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads,
                n_threads_batch=threads, flash_attn=flash, verbose=False)

    def decode() -> None:
        llm.reset()
        for i, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True), 1):
            if i == n_new:  # no stop token: exactly n_new, as on the other sides
                break

    pre = torch.randint(100, 40000, (n_prefill,), generator=torch.Generator().manual_seed(0))

    def prefill_() -> None:
        llm.reset()
        llm.eval(pre.tolist())

    out = {"decode": n_new / best_of(decode, repeat),
           "prefill": n_prefill / best_of(prefill_, repeat)}
    llm.close()
    # Its logits for every position of `text`, for the fidelity check: a second instance,
    # since logits_all would slow the timed prefill above.
    llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, flash_attn=flash,
                logits_all=True, verbose=False)
    llm.eval(text)
    out["scores"] = llm.scores[: len(text)].copy()
    llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fidelity-tokens", type=int, default=256)
    a = ap.parse_args()
    print_machine(threads=a.threads)
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
    quant = {"int8": quantize_int8_(copy.deepcopy(lm.model)),
             "int4": quantize_int4_(copy.deepcopy(lm.model))}
    for name, q in quant.items():
        rows.append({
            "weights": f"{name} (llmlab) vs fp32 (hf)",
            "llmlab_decode": ours(q, ids, a.new_tokens, a.repeat),
            "hf_decode": rows[0]["hf_decode"],
            "llmlab_prefill": prefill(q, a.prefill, a.repeat),
            "hf_prefill": rows[0]["hf_prefill"],
        })
        with speed_override(lean_decode=False):  # the same weights through the model's forward
            rows[-1]["llmlab_decode_model_path"] = ours(q, ids, a.new_tokens, a.repeat)
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
    for r in rows[2:]:
        print(f"{r['weights'].split()[0]} without the lean decode step (LLMLAB_LEAN_DECODE=0): "
              f"{r['llmlab_decode_model_path']:.1f} tok/s")
    # Fidelity, teacher-forced on real text: how often each predicts the fp32 model's next
    # token (fp32 = the GGUF's weights dequantised exactly). Quantized: the decode kernels.
    text = lm.tokenizer.encode(corpus_text("kjv")[:1200])[:a.fidelity_tokens]
    with torch.inference_mode():
        ref = lm.model(torch.tensor([text])).logits[0].argmax(-1)
    fid = {}
    for name, q in quant.items():
        lean = LeanDecoder(q, len(text))
        fid[name] = float((torch.cat([lean.step(t) for t in text]).argmax(-1) == ref)
                          .float().mean())
    for flash in (False, True):
        r = llama_cpp(str(p), ids, a.new_tokens, a.prefill, a.threads, a.repeat, flash, text)
        if r is None:
            print("llama.cpp: skipped (pip install llama-cpp-python; see the docstring)")
            break
        fid[f"llama.cpp (flash-attn {'on' if flash else 'off'})"] = float(
            (torch.from_numpy(r.pop("scores")).argmax(-1) == ref).float().mean())
        rows.append({"weights": f"llama.cpp Q4_1, flash_attn={'on' if flash else 'off'}",
                     "decode": r["decode"], "prefill": r["prefill"]})
        q8, q4 = rows[2], rows[3]
        print(f"| llama.cpp Q4_1 (flash-attn {'on' if flash else 'off'}) | decode "
              f"{r['decode']:.1f} tok/s: llmlab int4 {q4['llmlab_decode'] / r['decode']:.2f}x, "
              f"int8 {q8['llmlab_decode'] / r['decode']:.2f}x | prefill {r['prefill']:.0f} "
              f"tok/s: llmlab int8 {q8['llmlab_prefill'] / r['prefill']:.2f}x, int4 "
              f"{q4['llmlab_prefill'] / r['prefill']:.2f}x, bf16 "
              f"{rows[1]['llmlab_prefill'] / r['prefill']:.2f}x |")
    print(f"next-token agreement with the fp32 model, teacher-forced over {len(text)} KJV "
          "tokens: " + ", ".join(f"{k} {v:.3f}" for k, v in fid.items()))
    rows.append({"fidelity": fid, "fidelity_tokens": len(text)})
    emit(rows)


if __name__ == "__main__":
    main()
