"""SmolLM2-135M decode speed on a GPU: llmlab (static cache, torch.compile, CUDA graph) vs
transformers' `generate`, bf16, batch 1 and batch 32, same weights, same run.

    PYTHONPATH=. python benchmarks/generate_gpu.py [--new-tokens 256] [--batches 1 32]
        [--weights random|registry] [--no-compile] [--dry-run]

`--weights random` (the default) builds the SmolLM2-135M shape with seed-0 random weights and
hands transformers the same tensors (`to_hf_state`): decode speed does not depend on the
values, and the real weights (a 98 MB GGUF) need not travel to the GPU machine. Both sides
generate exactly `--new-tokens` tokens (no stop token), greedy. The first 32 greedy tokens of
batch row 0 are compared between the two as a check that both run the same model.
Ours decodes with Q/K/V and gate/up fused into one matmul each (`fuse_projections_`).
`--dry-run` runs the same code on the CPU with a tiny shape and no graphs, to check the
script before spending GPU time; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import emit, print_machine, stopwatch

import llmlab  # noqa: E402
from llmlab.generate.fast.static import StaticDecoder  # noqa: E402
from llmlab.generate.sampling import SamplingParams  # noqa: E402
from llmlab.model.quant import fuse_projections_  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def timed(fn) -> float:
    sync()
    t = stopwatch()
    fn()
    sync()
    return t()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ours(model, ids: list[int], batch: int, n_new: int, compile: bool,
         graph: bool, tiles: str | None = None) -> tuple[float, list[int]]:
    """tok/s and row 0's tokens; `tiles` (a `Tiles.parse` string, "" for the defaults)
    decodes with the Triton kernels (batch 1) instead of the compiled model."""
    # Decoding only: Q/K/V and gate/up become one matmul each (fewer launches per token).
    if not any(hasattr(m, "qkv_fused") for m in model.modules()):
        fuse_projections_(model)
    if tiles is not None:
        from llmlab.generate.fast.triton_decode import Tiles, TritonDecoder

        dec = TritonDecoder(model, len(ids) + n_new + 1, cuda_graph=graph,
                            tiles=Tiles.parse(tiles))
    else:
        dec = StaticDecoder(model, batch, len(ids) + n_new + 1, compile=compile,
                            cuda_graph=graph)
    params = SamplingParams(max_new_tokens=n_new, temperature=0)
    first: list[torch.Tensor] = []

    def go():
        first.clear()
        for st in dec.generate([ids] * batch, params):
            first.append(st.tokens[:1])  # stays on the device: no extra sync per step

    go()  # compile + capture
    rate = batch * n_new / min(timed(go) for _ in range(3))
    return rate, torch.cat(first).tolist()


def theirs(model, ids: list[int], batch: int, n_new: int) -> tuple[float, list[int]]:
    x = torch.tensor([ids] * batch, device=model.device)
    out: list[torch.Tensor] = []

    def go():
        out[:] = [model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                                 min_new_tokens=n_new, do_sample=False, pad_token_id=0)]

    go()
    rate = batch * n_new / min(timed(go) for _ in range(3))
    return rate, out[0][0, len(ids):].tolist()


def profile_triton(model, ids: list[int], tiles: str = "", steps: int = 32) -> None:
    """Kernel time per decode step, by kernel, for the Triton decoder without the graph."""
    from torch.profiler import ProfilerActivity, profile

    from llmlab.generate.fast.triton_decode import Tiles, TritonDecoder

    dec = TritonDecoder(model, len(ids) + steps + 8, cuda_graph=False, tiles=Tiles.parse(tiles))
    print(f"# kernel profile, tiles [{tiles or 'defaults'}], {steps} steps")
    with torch.inference_mode():
        _, slot = dec.prefill([ids], 0)
        tok = torch.tensor([ids[-1]], device=model.device)
        for i in range(3):
            dec.decode_step(tok, slot + i)  # compile the kernels
        sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available()
                                         else [])
        with profile(activities=acts) as prof:
            for i in range(steps):
                dec.decode_step(tok, slot + 3 + i)
            sync()
    print(prof.key_averages().table(sort_by="self_device_time_total" if torch.cuda.is_available()
                                    else "self_cpu_time_total", row_limit=12))


def prefix(a: list[int], b: list[int], n: int = 32) -> int:
    """How many leading tokens agree, up to n."""
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))
    return min(same, n)


def models(weights: str, device: str, dry: bool):
    """(our Transformer, transformers' model, prompt ids) on the same weights, bf16."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from llmlab.model import Transformer, preset
    from llmlab.weights.hf import to_hf_config, to_hf_state

    dtype = torch.float32 if dry else torch.bfloat16
    if weights == "registry":
        from llmlab.weights.registry import _smollm2_file

        lm = llmlab.load("smollm2-135m-instruct", dtype=dtype, device=device)
        p = _smollm2_file()
        hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
        return lm.model, hf.to(device).eval(), lm.tokenizer.encode(PROMPT)
    over = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128, vocab_size=512) \
        if dry else {}
    cfg = preset("smollm2-135m", **over)
    torch.manual_seed(0)
    ours_m = Transformer(cfg).to(device=device, dtype=dtype).eval()
    hc = {k: v for k, v in to_hf_config(cfg).items() if k not in ("architectures",)}
    hf = LlamaForCausalLM(LlamaConfig(**hc)).to(dtype)
    missing, unexpected = hf.load_state_dict(to_hf_state(cfg, ours_m.state_dict()), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SystemExit(f"weight names differ: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (12,), generator=g).tolist()  # a 12-token prompt
    return ours_m, hf.to(device).eval(), ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--weights", choices=["random", "registry"], default="random")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, no CUDA graph")
    ap.add_argument("--triton", nargs="*", default=None, metavar="TILES",
                    help="also decode batch 1 with the Triton kernels, once per tile setting "
                         "(e.g. 'rows=8,keys=256'; none given: the defaults)")
    ap.add_argument("--profile", nargs="*", default=None, metavar="TILES",
                    help="print the GPU time per kernel of 32 un-graphed Triton decode steps, "
                         "once per tile setting (none given: the defaults)")
    ap.add_argument("--out", help="write the rows here (JSON)")
    a = ap.parse_args()
    print_machine()
    if a.dry_run:
        device, a.new_tokens, a.batches = "cpu", 8, [1, 2]
    elif not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this benchmark needs a GPU (or --dry-run)")
    else:
        device = "cuda"
    ours_m, hf, ids = models(a.weights, device, a.dry_run)
    rows = []
    with torch.inference_mode():
        for b in a.batches:
            r_ours, t_ours = ours(ours_m, ids, b, a.new_tokens, not a.no_compile,
                                  graph=not a.dry_run)
            r_hf, t_hf = theirs(hf, ids, b, a.new_tokens)
            same = prefix(t_ours, t_hf)
            r = {"batch": b, "llmlab": r_ours, "transformers": r_hf,
                 "greedy_tokens_identical_prefix": same}
            rows.append(r)
            print(f"batch {b}: llmlab {r_ours:,.0f} tok/s, transformers {r_hf:,.0f} tok/s, "
                  f"ratio {r_ours / r_hf:.1f}x; first {r['greedy_tokens_identical_prefix']} "
                  f"greedy tokens identical (of 32)", flush=True)
            for tiles in (a.triton or [""]) if a.triton is not None and b == 1 else []:
                r_tri, t_tri = ours(ours_m, ids, b, a.new_tokens, False, not a.dry_run, tiles)
                same = prefix(t_tri, t_hf)
                rows.append({"batch": b, "kernels": "triton", "tiles": tiles,
                             "llmlab": r_tri, "transformers": r_hf,
                             "greedy_tokens_identical_prefix": same,
                             "identical_to_compiled_prefix": prefix(t_tri, t_ours)})
                print(f"batch {b}: llmlab triton [{tiles or 'defaults'}] {r_tri:,.0f} tok/s, "
                      f"ratio {r_tri / r_hf:.1f}x; first {same} greedy tokens identical to "
                      f"transformers, {prefix(t_tri, t_ours)} to compiled (of 32)", flush=True)
    for tiles in (a.profile or [""]) if a.profile is not None else []:
        profile_triton(ours_m, ids, tiles)
    dev = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    print(f"# {dev}, torch {torch.__version__}, {a.weights} weights, "
          f"{'fp32' if a.dry_run else 'bf16'}, {a.new_tokens} new tokens, "
          f"prompt {len(ids)} tokens")
    emit(rows)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
