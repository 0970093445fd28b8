"""A lean decode step for weight-quantized Llama-style models on the CPU, at batch 1.

With int8/int4 weights a CPU decode step spends as much time around the matmuls as in them:
small bf16 ops (norms, RoPE, casts), a flash-attention kernel built for long queries doing
one, and Python module calls (BENCHMARKS.md, "Core: generation speed"). This step is the
same model, written out for one token:
- the residual stream stays fp32, and only the matmul inputs are cast to bf16, so the small
  ops run in fp32, where the CPU kernels are fastest, and skip most casts;
- attention for the one query is two small fp32 batched matmuls over the filled cache,
  the query heads of each KV head side by side (GQA without repeating keys);
- it calls the quantized layers' kernels directly (`Int8Linear.decode`, `Int4Linear.decode`).

It follows the model's maths (tests check it against the model's own forward and against
transformers), and `pick_decoder` chooses it for batch-1 decoding of such models on the CPU;
prefill still runs the model (compute-bound, batched), whose cache it then takes over.
`speed.lean_decode = False` (LLMLAB_LEAN_DECODE=0) turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.generate.constrain import guide_for
from llmlab.generate.sampling import SamplingParams, Step, Stopper, sample, seen_tokens
from llmlab.model.cache import KVCache
from llmlab.model.positions import rope_angles
from llmlab.model.quant import WeightOnlyLinear
from llmlab.model.transformer import Transformer


def lean_supported(model: Any) -> bool:
    if not isinstance(model, Transformer):  # wrapped (prompt/prefix tuning): the model's own
        return False
    cfg = model.cfg
    if not (cfg.pos == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu"
            and cfg.prenorm and cfg.causal and not cfg.bias and cfg.lm_head
            and cfg.final_norm and not cfg.embed_scale and not cfg.embed_norm
            and not cfg.is_encoder_decoder and not cfg.type_vocab_size
            and not cfg.qk_norm and not cfg.logit_softcap and not cfg.value_embeds):
        return False
    mods = [model.lm_head] + [m for b in model.model.layers for m in (
        getattr(b.self_attn, "qkv_fused", None), b.self_attn.o_proj,
        getattr(b.mlp, "gate_up_fused", None), b.mlp.down_proj)]  # None: not fused
    return all(isinstance(m, WeightOnlyLinear) and m.use_kernel for m in mods)


class LeanDecoder:
    """One token at a time, batch 1, after a prefill by the model (`take_cache`)."""

    def __init__(self, model: Any, max_len: int, return_logits: bool = False) -> None:
        cfg = model.cfg
        self.model, self.return_logits = model, return_logits
        self.max_len = max_len
        self.h, self.kv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.eps = cfg.norm_eps
        st = model.model
        self.emb = st.embed_tokens.weight
        f32 = torch.float32
        self.layers = [(b.input_layernorm.weight.to(f32), b.self_attn.qkv_fused.decode,
                        b.self_attn.o_proj.decode, b.post_attention_layernorm.weight.to(f32),
                        b.mlp.gate_up_fused.decode, b.mlp.down_proj.decode)
                       for b in st.layers]
        self.norm_w, self.head = st.norm.weight.to(f32), model.lm_head.decode
        self.act = model.lm_head.act_dtype
        ang = rope_angles(torch.arange(max_len), self.hd, cfg.rope_theta).float()
        # rotate_half(x) * sin == swap_halves(x) * [-sin, sin]: the sign folded into the table
        self.cos = torch.cat([ang.cos(), ang.cos()], -1)
        self.sin = torch.cat([-ang.sin(), ang.sin()], -1)
        shape = (self.kv, max_len, self.hd)
        self.k = [torch.empty(shape) for _ in self.layers]
        self.v = [torch.empty(shape) for _ in self.layers]
        self.scores = torch.empty(self.kv, self.h // self.kv, max_len)  # baddbmm's (unread) C
        self.pos = 0

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 pad_id: int = 0) -> Iterator[Step]:
        """`iter_decode`'s loop for one unpadded prompt: the model prefills, this steps."""
        params.validate()
        if params.max_new_tokens == 0:
            return
        m, (prompt,) = self.model, prompts
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        seen = (seen_tokens(prompts, m.cfg.vocab_size, "cpu")
                if params.repetition_penalty != 1.0 else None)
        stopper = Stopper(params, 1, "cpu", pad_id)
        guide = guide_for(params, 1, m.cfg.vocab_size)
        cache = KVCache(m.cfg, 1, len(prompt) + params.max_new_tokens, "cpu", m.dtype)
        logits = m(torch.tensor([prompt]), cache=cache, last_only=True).logits[:, -1]
        self.take_cache(cache)
        for i in range(params.max_new_tokens):
            nxt = sample(guide.mask(logits) if guide else logits, params, gen, seen)
            if guide is not None:
                guide.advance(nxt)
            if seen is not None:
                seen[0, nxt] = True
            step = stopper.step(i, nxt, logits if self.return_logits else None)
            yield step
            if bool(step.done.all()):
                return
            logits = self.step(int(nxt[0]))

    def take_cache(self, cache: KVCache) -> None:
        """Continue after the model's prefill: its keys/values, in fp32."""
        n = cache.length
        for i in range(len(self.layers)):
            self.k[i][:, :n] = cache.k[i][0, :, :n]
            self.v[i][:, :n] = cache.v[i][0, :, :n]
        self.pos = n

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w).to(self.act)

    def _rope(self, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        half = self.hd // 2
        return x * c + torch.cat([x[:, half:], x[:, :half]], -1) * s

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Logits (1, vocab), fp32, for the token after `token` (written at `pos`)."""
        pos, n = self.pos, self.pos + 1
        if n > self.max_len:
            raise ValueError(f"KV cache is full: {n} positions needed, {self.max_len} allocated")
        h, kv, hd = self.h, self.kv, self.hd
        c, s = self.cos[pos], self.sin[pos]
        x = self.emb[token].to(torch.float32, copy=True)[None]  # the residual stream, fp32
        for (w1, qkv_mm, o_mm, w2, gu_mm, down_mm), k, v in zip(self.layers, self.k, self.v,
                                                                strict=True):
            qkv = qkv_mm(self._norm(x, w1))[0].float()
            qk = self._rope(qkv[: (h + kv) * hd].view(h + kv, hd), c, s)  # q and k at once
            k[:, pos] = qk[h:]
            v[:, pos] = qkv[(h + kv) * hd:].view(kv, hd)
            att = torch.baddbmm(self.scores[:, :, :n], qk[:h].view(kv, h // kv, hd),
                                k[:, :n].transpose(1, 2), beta=0, alpha=hd ** -0.5)
            out = torch.bmm(att.softmax(-1), v[:, :n]).view(1, h * hd).to(self.act)
            x.add_(o_mm(out))
            g, u = gu_mm(self._norm(x, w2)).chunk(2, -1)
            x.add_(down_mm(F.silu(g).mul_(u)))
        self.pos = n
        return self.head(self._norm(x, self.norm_w)).float()
