"""`TritonDecoder`: batch-1 decoding through the Triton kernels of `triton_kernels.py` (five,
or three fused, per layer), replayed as one CUDA graph, and greedy decoding whole inside the
graph. `Tiles` holds the launch settings (`speed.triton_tiles` replaces the defaults).

Prefill still runs the model's own forward and fills the same `KVCache`. Without a GPU the
kernels run in Triton's interpreter (`TRITON_INTERPRET=1`), which is how the tests compare
them with the model on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton

from llmlab.generate.fast.static import StaticDecoder
from llmlab.generate.fast.triton_kernels import (
    _attend,
    _attend_out,
    _attn_out_add,
    _embed,
    _gate_up_silu,
    _gemv_add,
    _mlp_down,
    _norm_head,
    _pick,
    _qkv_rope_store,
)
from llmlab.generate.sampling import SamplingParams, Step
from llmlab.model.layers import RMSNorm
from llmlab.model.positions import rope_cos_sin
from llmlab.model.transformer import Transformer


def supports(model: Transformer) -> str | None:
    """Why `model` can't use these kernels, or None when it can."""
    cfg = model.cfg
    checks = {
        "a decoder-only model": cfg.causal and not cfg.is_encoder_decoder and cfg.lm_head,
        "RMSNorm": cfg.norm == "rmsnorm",
        "pre-norm": cfg.prenorm,
        "RoPE": cfg.pos == "rope",
        "a SwiGLU MLP": cfg.mlp == "swiglu",
        "no biases": not cfg.bias,
        "no embedding scale or norm": not cfg.embed_scale and not cfg.embed_norm,
        "a final norm": cfg.final_norm,
        "no QK-norm, logit soft-capping or value embeddings": not cfg.qk_norm
        and not cfg.logit_softcap and not cfg.value_embeds,
        "bf16, fp16 or fp32 weights": model.dtype in (torch.bfloat16, torch.float16,
                                                       torch.float32),
    }
    missing = [k for k, ok in checks.items() if not ok]
    if missing:
        return "the Triton decoder needs " + ", ".join(missing)
    for m in model.modules():  # adapters and quantised layers change the maths
        if hasattr(m, "merged") or type(m).__name__ in ("Int8Linear", "Int4Linear", "Linear4bit"):
            return f"the Triton decoder needs plain linear layers, found {type(m).__name__}"
    return None


@dataclass(frozen=True)
class Tiles:
    """Rows of a weight matrix per program (each program loads its rows whole, in one
    round trip), and launch settings. Few rows make many programs, which a GEMV needs to
    keep enough memory requests in flight."""

    # Defaults: the fastest of the settings swept on an H100 (BENCHMARKS.md).
    split: int = 8  # programs per attention head in the Q/K/V kernel
    rows: int = 8  # output projection, gate/up
    rows_down: int = 2
    rows_head: int = 16
    keys: int = 256  # cache slots per attention loop step
    kv_splits: int = 1  # programs per head over the cache (flash-decoding), a power of 2
    warps: int = 8
    # 1: three kernels per layer (Q/K/V; attention + output projection; the whole MLP), the
    # projections' partial sums added with fp32 atomics into an fp32 residual; 0: five.
    # Fusion bits: 1, the MLP is one kernel; 2, attention and the output projection are one
    # (needs kv_splits=1). Fused projections add partial sums into an fp32 residual with
    # atomics. 0: five kernels per layer; 3: three.
    fuse: int = 0
    rows_o: int = 64  # fuse & 2: output-projection rows per attention program, a power of 2
    rows_mlp: int = 16  # fuse & 1: d_ff activations (and down-projection columns) per program
    pdl: int = 1  # programmatic dependent launch, where the GPU has it (sm_90+)

    @classmethod
    def parse(cls, text: str) -> Tiles:
        """'rows=8,k=128' -> Tiles(rows=8, k=128)."""
        kw = {}
        for part in filter(None, text.split(",")):
            name, _, val = part.partition("=")
            if name not in cls.__dataclass_fields__ or not val.isdigit():
                raise ValueError(f"tile setting {part!r}: expected NAME=INT with NAME in "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            kw[name] = int(val)
        return cls(**kw)


class TritonDecoder(StaticDecoder):
    """`StaticDecoder` for batch 1 whose decode step is the Triton kernels above. The kernels
    read the model's weights where they are; dropout is not applied (inference)."""

    def __init__(self, model: Transformer, max_len: int, cuda_graph: bool | None = None,
                 tiles: Tiles | None = None) -> None:
        why = supports(model)
        if why:
            raise ValueError(why)
        super().__init__(model, 1, max_len, compile=False, cuda_graph=cuda_graph)
        if self.amp:
            raise ValueError("the Triton decoder runs in the model dtype: call it outside "
                             "autocast")
        cfg, dev, dt = model.cfg, model.device, model.dtype
        assert cfg.head_dim is not None and cfg.n_kv_head is not None and cfg.d_ff is not None
        self.d, self.hd, self.nh, self.nkv = cfg.d_model, cfg.head_dim, cfg.n_head, cfg.n_kv_head
        self.t = t = tiles or Tiles()
        if self.hd & (self.hd - 1) or (self.hd // 2) % t.split:
            raise ValueError(f"head_dim {self.hd} must be a power of 2 divisible by "
                             f"2 * split ({t.split})")
        if t.kv_splits < 1 or t.kv_splits & (t.kv_splits - 1):
            raise ValueError(f"kv_splits must be a power of 2, got {t.kv_splits}")
        if t.fuse not in (0, 1, 3):
            raise ValueError(f"fuse must be 0 (none), 1 (the MLP) or 3 (the MLP, and attention "
                             f"with the output projection), got {t.fuse}")
        if t.fuse & 2 and t.kv_splits != 1:
            raise ValueError("fuse=3 attends with one program per head and output chunk: "
                             f"it needs kv_splits=1, got {t.kv_splits}")
        if t.fuse & 2 and (t.rows_o < 1 or t.rows_o & (t.rows_o - 1)):
            raise ValueError(f"rows_o must be a power of 2, got {t.rows_o}")
        for name, n, rows in (("d_model", self.d, t.rows), ("d_ff", cfg.d_ff, t.rows),
                              ("d_model", self.d, t.rows_down), ("d_ff", cfg.d_ff, t.rows_mlp)):
            if n % rows:
                raise ValueError(f"{name} {n} must be a multiple of the tile's {rows} rows")
        self.layers = []
        for blk in model.model.layers:
            at, mlp = blk.self_attn, blk.mlp
            # Views of the model's own weights (no copies): training that updates them in
            # place is seen by the next step, as with the compiled decoder.
            fused = getattr(at, "qkv_fused", None)
            nq, nkv = self.nh * self.hd, self.nkv * self.hd
            wq, wk, wv = (fused.weight.split([nq, nkv, nkv]) if fused is not None
                          else (at.q_proj.weight, at.k_proj.weight, at.v_proj.weight))
            gu = getattr(mlp, "gate_up_fused", None)
            wg, wu = (gu.weight.chunk(2) if gu is not None
                      else (mlp.gate_proj.weight, mlp.up_proj.weight))
            ln1, ln2 = blk.input_layernorm, blk.post_attention_layernorm
            assert isinstance(ln1, RMSNorm) and isinstance(ln2, RMSNorm)
            mats = [wq, wk, wv, at.o_proj.weight, wg, wu, mlp.down_proj.weight]
            if not all(w.is_contiguous() for w in mats):
                raise ValueError("the Triton decoder needs contiguous weight matrices")
            self.layers.append([w.detach() for w in
                                (ln1.weight, wq, wk, wv, at.o_proj.weight, ln2.weight, wg, wu,
                                 mlp.down_proj.weight)])
        self.embed = model.model.embed_tokens.weight.detach()
        self.final_norm = model.model.norm.weight.detach()
        self.head = model.lm_head.weight.detach()
        self.eps = float(cfg.norm_eps)
        self.cos, self.sin = (c.contiguous() for c in rope_cos_sin(
            torch.arange(cfg.max_seq_len, device=dev), self.hd, cfg.rope_theta, dt))
        self.h = torch.zeros(self.d, device=dev, dtype=dt)  # the residual stream
        # Fused: the residual in fp32, as res[layer % 2] + z (see _qkv_rope_store).
        self.res = torch.zeros(2, self.d, device=dev, dtype=torch.float32)
        self.z = torch.zeros(self.d, device=dev, dtype=torch.float32)
        self.q = torch.zeros(self.nh * self.hd, device=dev, dtype=dt)
        # Attention partials per (head, split): running max, sum, and weighted values.
        sp = self.nh * t.kv_splits
        self.pm = torch.zeros(sp, device=dev, dtype=torch.float32)
        self.pl = torch.zeros(sp, device=dev, dtype=torch.float32)
        self.pacc = torch.zeros(sp * self.hd, device=dev, dtype=torch.float32)
        self.act = torch.zeros(cfg.d_ff, device=dev, dtype=dt)
        self.logits = torch.zeros(1, cfg.vocab_size, device=dev, dtype=dt)
        self.scale = self.hd ** -0.5
        self.blocks = triton.cdiv(self.head.shape[0], t.rows_head)  # LM-head programs
        self.pmax = torch.zeros(self.blocks, device=dev, dtype=torch.float32)
        self.pidx = torch.zeros(self.blocks, device=dev, dtype=torch.long)
        self.toks = torch.zeros(max_len, device=dev, dtype=torch.long)  # greedy outputs
        self.n_step = torch.zeros(1, device=dev, dtype=torch.long)
        self.greedy_graph: torch.cuda.CUDAGraph | None = None
        # PDL needs Hopper or newer, and a real launch (not the interpreter).
        self.pdl = bool(t.pdl and dev.type == "cuda"
                        and torch.cuda.get_device_capability(dev) >= (9, 0))

    def _step(self, greedy: bool = False) -> torch.Tensor:
        p2 = triton.next_power_of_2
        t, d, dp, hd = self.t, self.d, p2(self.d), self.hd
        k0 = self.cache.k[0]
        c_sh, c_st = k0.stride(1), k0.stride(2)
        kw: dict = {"num_warps": t.warps, "PDL": self.pdl}
        if self.pdl:
            kw["launch_pdl"] = True
        # Fused (any bit), the residual is fp32 res[i % 2] + z at layer i: the Q/K/V kernel
        # writes their sum to res[(i + 1) % 2], attention adds into that and clears z, and
        # the MLP adds into z.
        fuse, z, ko, rep = bool(t.fuse), self.z, self.nh * hd, self.nh // self.nkv
        h = self.res[0] if fuse else self.h
        _embed[(1,)](self.x, self.embed, h, z, D=d, DP=dp, FUSE=fuse, **kw)
        for i, (g1, wq, wk, wv, wo, g2, wg, wu, wd) in enumerate(self.layers):
            kc, vc = self.cache.k[i], self.cache.v[i]
            nxt = self.res[(i + 1) % 2] if fuse else h
            _qkv_rope_store[(self.nh + 2 * self.nkv, t.split)](
                h, z, nxt, g1, wq, wk, wv, self.cos, self.sin, self.pos, self.slot, self.q, kc,
                vc, c_sh, c_st, self.eps, D=d, DP=dp, HD=hd, NH=self.nh, NKV=self.nkv,
                SPLIT=t.split, FUSE=fuse, **kw)
            h = nxt
            if t.fuse & 2:
                _attend_out[(self.nh, triton.cdiv(d, t.rows_o))](
                    self.q, kc, vc, self.slot, wo, h, z, c_sh, c_st, self.scale, K=ko, D=d,
                    HD=hd, REP=rep, BT=t.keys, BO=t.rows_o, **kw)
            else:
                _attend[(self.nh, t.kv_splits)](
                    self.q, kc, vc, self.slot, self.pm, self.pl, self.pacc, c_sh, c_st,
                    self.scale, HD=hd, REP=rep, BT=t.keys, S=t.kv_splits, **kw)
                _attn_out_add[(d // t.rows,)](
                    self.pm, self.pl, self.pacc, wo, h, z, K=ko, KP=p2(ko), HD=hd,
                    S=t.kv_splits, BN=t.rows, FUSE=fuse, **kw)
            if t.fuse & 1:
                _mlp_down[(wg.shape[0] // t.rows_mlp,)](
                    h, g2, wg, wu, wd, z, self.eps, D=d, DP=dp, F=wg.shape[0], BN=t.rows_mlp,
                    **kw)
            else:
                _gate_up_silu[(wg.shape[0] // t.rows,)](h, g2, wg, wu, self.act, self.eps,
                                                        D=d, DP=dp, BN=t.rows, **kw)
                kd = wd.shape[1]
                _gemv_add[(d // t.rows_down,)](self.act, wd, h, K=kd, KP=p2(kd),
                                               BN=t.rows_down, **kw)
        _norm_head[(self.blocks,)](
            h, z, self.final_norm, self.head, self.logits, self.pmax, self.pidx, self.eps,
            self.head.shape[0], D=d, DP=dp, BN=t.rows_head, ARGMAX=greedy, FUSE=fuse, **kw)
        if greedy:
            _pick[(1,)](self.pmax, self.pidx, self.blocks, self.x, self.pos, self.slot,
                        self.toks, self.n_step, NP=p2(self.blocks), **kw)
        return self.logits

    def _greedy_step(self) -> torch.Tensor:
        return self._step(greedy=True)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 pad_id: int = 0) -> Iterator[Step]:
        """Greedy decoding runs whole in the graph (argmax, next input, position); other
        sampling takes `StaticDecoder`'s path, which samples on the host side between
        replays."""
        if not params.greedy or params.repetition_penalty != 1.0:
            yield from super().generate(prompts, params, pad_id)
            return
        logits, slot = self._start(prompts, params, pad_id)
        n = params.max_new_tokens
        if n == 0:
            return
        self.toks[:1] = logits.argmax(-1)
        self.x.copy_(self.toks[:1].view(1, 1))
        self.pos.copy_(self.positions[:, slot : slot + 1])
        self.slot.fill_(slot)
        self.n_step.fill_(1)
        stops = set(params.stop_token_ids)
        for i in range(n):
            tok = self.toks[i : i + 1]  # valid until the next generate() call
            # Only a stop token needs the host to look (a sync); the budget it knows.
            done = i == n - 1 or (bool(stops) and int(tok) in stops)
            yield Step(tok, torch.tensor([done]))
            if done:
                return
            self._replay_greedy()

    def _replay_greedy(self) -> None:
        if not self.use_graph:
            self._greedy_step()
            return
        if self.greedy_graph is None:
            # The capture runs the step (warm-up + capture) on live buffers; put back the
            # position, slot and input token that the runs advanced.
            saved = [b.clone() for b in (self.x, self.pos, self.slot, self.n_step)]
            self.greedy_graph, _ = self._capture(self._greedy_step)
            for b, v in zip((self.x, self.pos, self.slot, self.n_step), saved, strict=True):
                b.copy_(v)
        self.greedy_graph.replay()
