"""The Triton batch-1 decode kernels against transformers' Llama, in Triton's interpreter.

The interpreter runs the same kernel source on the CPU (numpy), so this checks the maths of
every kernel (RMSNorm, fused Q/K/V + RoPE + cache write, GQA attention with the online
softmax over several key blocks, the residual GEMVs, SwiGLU, the LM head). Speed is the GPU's
business (benchmarks/generate_gpu.py). TRITON_INTERPRET must be set before the kernels are
defined, so the check runs in a fresh interpreter process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    from transformers import AutoModelForCausalLM
    from llmlab.generate.sampling import SamplingParams
    from llmlab.generate.fast.static import StaticDecoder
    from llmlab.generate.fast.triton_decode import Tiles, TritonDecoder
    from llmlab.model import ModelConfig, Transformer
    from llmlab.model.quant import fuse_projections_
    from llmlab.weights.hf import save_hf

    def run(dtype_name, tie, proj, kv_splits, fuse):
        dtype = getattr(torch, dtype_name)
        cfg = ModelConfig(vocab_size=320, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=160,
                          max_seq_len=128, pos="rope", rope_theta=10000.0, norm="rmsnorm",
                          mlp="swiglu", bias=False, tie_embeddings=tie == "tied")
        torch.manual_seed(0)
        m = Transformer(cfg).eval()
        g = torch.Generator().manual_seed(1)
        for n, p in m.named_parameters():  # norms of all ones would hide a missing norm
            if "norm" in n:
                p.data = 1 + 0.1 * torch.randn(p.shape, generator=g)
        with tempfile.TemporaryDirectory() as d:
            save_hf(m, d)
            hf = AutoModelForCausalLM.from_pretrained(d).eval()
        m = m.to(dtype)
        if proj == "fused":
            fuse_projections_(m)
        prompt = torch.randint(0, 320, (21,), generator=g).tolist()
        # keys=16: the 21-token prompt plus the new tokens span two attention blocks, which
        # kv_splits > 1 spreads over programs whose partial softmaxes are then combined.
        # fuse=3 with rows_o=32: two output chunks per head, each recomputing the attention.
        tri = TritonDecoder(m, 64, tiles=Tiles(keys=16, rows=16, rows_down=16, rows_head=32,
                                               kv_splits=kv_splits, fuse=fuse,
                                               rows_o=32, rows_mlp=16))
        # Few new tokens: every one is a numpy-interpreted pass over all kernels (about 1 s).
        params = SamplingParams(max_new_tokens=6, temperature=0)
        out = {"tokens": [int(s.tokens[0]) for s in tri.generate([prompt], params)]}
        with torch.inference_mode():
            seq = prompt + out["tokens"]
            ref = hf(torch.tensor([seq])).logits[0].float()  # fp32 transformers, full sequence
            logits, slot = tri.prefill([prompt], 0)
            diffs = []
            for i, tok in enumerate(out["tokens"][:3]):  # the sampling path's kernels
                got = tri.decode_step(torch.tensor([tok]), slot + i)[0].float()
                diffs.append((got - ref[len(prompt) + i]).abs().max().item())
            out["max_diff"] = max(diffs)
            out["scale"] = ref.abs().max().item()
            # The PyTorch model's own error at this dtype, decoding the same tokens.
            base = StaticDecoder(m, 1, 64)
            _, slot = base.prefill([prompt], 0)
            own = [base.decode_step(torch.tensor([tok]), slot + i)[0].float()
                   for i, tok in enumerate(out["tokens"][:3])]
            out["model_diff"] = max((o - ref[len(prompt) + i]).abs().max().item()
                                    for i, o in enumerate(own))
            out["static_tokens"] = [int(s.tokens[0]) for s in base.generate([prompt], params)]
            # Greedy with a stop token (decoded in the graph) stops on its first occurrence.
            stop = out["tokens"][2]
            sp = SamplingParams(max_new_tokens=6, temperature=0, stop_token_ids=[stop])
            got = [(int(s.tokens[0]), bool(s.done[0])) for s in tri.generate([prompt], sp)]
            out["stopped"] = got
            out["stop"] = stop
            # Sampling (temperature, top-p) takes the host-side sampler on the kernels' logits.
            sp = SamplingParams(max_new_tokens=3, temperature=0.9, top_p=0.95, seed=3)
            out["sampled"] = [int(s.tokens[0]) for s in tri.generate([prompt], sp)]
            out["static_sampled"] = [int(s.tokens[0]) for s in base.generate([prompt], sp)]
            out["hf_tokens"] = hf.generate(torch.tensor([prompt]), max_new_tokens=6,
                                           do_sample=False)[0, len(prompt):].tolist()
        return out

    # One process for every configuration: the imports and TRITON_INTERPRET set-up are paid once.
    print(json.dumps([run(*c) for c in json.loads(sys.argv[1])]))
    """
)


# id -> (dtype, embeddings, projections, kv_splits, fuse). Between them: every fuse level
# (0, 1, 3), one and two KV splits, both dtypes, tied and untied heads, fused projections.
CONFIGS = {
    "fp32-five-kernels": ("float32", "untied", "separate", 2, 0),
    "fp32-three": ("float32", "untied", "separate", 1, 3),
    "bf16-fused-mlp": ("bfloat16", "tied", "fused", 2, 1),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(list(CONFIGS.values()))],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return dict(zip(CONFIGS, json.loads(p.stdout.strip().splitlines()[-1]), strict=True))


@pytest.mark.parametrize("name", ["fp32-five-kernels", "fp32-three"])
def test_triton_decode_matches_transformers_fp32(runs: dict[str, dict], name: str):
    out = runs[name]
    # Every decode step's logits against transformers' full forward of the same sequence.
    assert out["max_diff"] < 1e-4 * max(1.0, out["scale"]), out
    assert out["tokens"] == out["hf_tokens"] == out["static_tokens"]
    first = out["tokens"].index(out["stop"])
    assert [t for t, _ in out["stopped"]] == out["tokens"][: first + 1]
    assert [d for _, d in out["stopped"]] == [False] * first + [True]
    assert out["sampled"] == out["static_sampled"]


def test_triton_decode_bf16_is_as_close_as_the_model(runs: dict[str, dict]):
    out = runs["bf16-fused-mlp"]
    # In bf16 both the kernels and the PyTorch model differ from fp32 transformers by
    # rounding, at the same points, so their errors are of one size; a wrong formula would
    # be off by O(scale). The interpreter casts fp32 -> bf16 by truncation, not the GPU's
    # round-to-nearest, which about doubles the kernels' error here (0.012 vs 0.004).
    ulp = 2.0 ** -8 * max(1.0, out["scale"])
    assert out["max_diff"] <= 4 * out["model_diff"] + ulp, out
    assert out["max_diff"] < 0.05 * max(1.0, out["scale"]), out


def test_engine_takes_tiles_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from llmlab.generate.fast import triton_decoder as _triton_decoder
    from llmlab.model import ModelConfig, Transformer
    from llmlab.settings import speed

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layer=1, n_head=4, n_kv_head=2, d_ff=128,
                      max_seq_len=32, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    m = Transformer(cfg).eval()
    monkeypatch.setattr(speed, "triton_tiles", "fuse=3,rows_o=32")
    dec = _triton_decoder(m, 1, 32, amp=False)
    assert dec is not None and (dec.t.fuse, dec.t.rows_o) == (3, 32)
    monkeypatch.setattr(speed, "triton_tiles", "fuse=3,kv_splits=2")
    with pytest.raises(ValueError, match="needs kv_splits=1"):
        _triton_decoder(m, 1, 32, amp=False)
    monkeypatch.setattr(speed, "triton_tiles", "rowz=8")
    with pytest.raises(ValueError, match="LLMLAB_TRITON_DECODE='rowz=8'.*NAME=INT"):
        _triton_decoder(m, 1, 32, amp=False)
    monkeypatch.setattr(speed, "triton_decode", False)
    assert _triton_decoder(m, 1, 32, amp=False) is None
