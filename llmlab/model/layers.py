"""Building blocks: norms, attention (self and cross), MLPs and one transformer block.

Module names follow HF Llama (`q_proj`, `gate_proj`, `input_layernorm`, ...) so that
weights and PEFT adapter keys map across without a renaming table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.cache import KVCache
from llmlab.model.config import ModelConfig
from llmlab.model.linear import Linear
from llmlab.model.positions import apply_rope


def _rms_normed(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x / rms(x) and 1 / rms(x), in fp32 so bf16 activations don't lose the mean-square."""
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf * r, r


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm with its backward written out. Autograd's chain through pow, mean, add, rsqrt
    and two muls is about 16 small kernels per norm; this is 8 (6 when the weight is frozen,
    as under LoRA), which matters where a small model's eager step is bound by launches.
    With xn = x r, r = (mean(x^2) + eps)^(-1/2) and gn = g w:
        dx = r (gn - xn mean(gn xn)),   dw = sum over positions of g xn."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor,
                weight: torch.Tensor, eps: float) -> torch.Tensor:
        xn, r = _rms_normed(x, eps)
        ctx.save_for_backward(xn, r, weight)
        ctx.x_dtype = x.dtype  # type: ignore[attr-defined]
        return weight * xn.to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        xn, r, w = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        x_dt = ctx.x_dtype  # type: ignore[attr-defined]
        gx = gw = None
        if need_w:
            gw = (g * xn.to(x_dt)).reshape(-1, g.shape[-1]).sum(0).to(w.dtype)
        if need_x:
            gn = (g * w).float()
            gx = ((gn - xn * (gn * xn).mean(-1, keepdim=True)) * r).to(x_dt)
        return gx, gw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormFn.apply(x, self.weight, self.eps)
        return self.weight * _rms_normed(x, self.eps)[0].to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
         is_causal: bool, dropout: float, gqa: bool) -> torch.Tensor:
    """torch's scaled_dot_product_attention, in fp32 when training in bf16 on a CPU: there its
    bf16 backward is about 3x slower than fp32's (torch 2.13, AVX512-BF16), a quarter of a
    tiny model's step; the projections around it keep bf16's 2x (benchmarks/SPEEDRUN.md)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
        if mask is not None and mask.is_floating_point():
            mask = mask.float()
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               is_causal=is_causal, dropout_p=dropout,
                                               enable_gqa=gqa)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          dropout_p=dropout, enable_gqa=gqa)


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads; self-attention or cross-attention."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, cross: bool = False) -> None:
        super().__init__()
        assert cfg.head_dim is not None and cfg.n_kv_head is not None
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.layer_idx, self.cross = layer_idx, cross
        # A list while `record_attention` (model/record.py) runs: the maps go there.
        self.record: list[dict[str, torch.Tensor]] | None = None
        self.use_rope = cfg.pos == "rope" and not cross
        self.qk_norm = cfg.qk_norm
        self.dropout = cfg.dropout
        d, hd = cfg.d_model, cfg.head_dim
        self.q_proj = Linear(d, self.n_head * hd, bias=cfg.bias)
        self.k_proj = Linear(d, self.n_kv_head * hd, bias=cfg.bias)
        self.v_proj = Linear(d, self.n_kv_head * hd, bias=cfg.bias)
        self.o_proj = Linear(self.n_head * hd, d, bias=cfg.bias)
        if not cross and cfg.value_table(layer_idx) is not None:
            # v <- a v + b ve, (a, b) learned, from 1/2 each (modded-nanogpt's lambdas)
            self.value_lambdas = nn.Parameter(torch.tensor([0.5, 0.5]))

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projections of self-attention (`model/quant.py`'s FusedAttention: one matmul)."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        memory: torch.Tensor | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`ve` (B, T, n_kv_head * head_dim): this layer's value embedding of the tokens."""
        b, t, _ = x.shape
        if self.cross:
            q = self._heads(self.q_proj(x), self.n_head)
            kv = cache.cross_kv(self.layer_idx) if cache is not None else None
            if kv is None:
                assert memory is not None, "cross-attention needs the encoder output"
                kv = (
                    self._heads(self.k_proj(memory), self.n_kv_head),
                    self._heads(self.v_proj(memory), self.n_kv_head),
                )
                if cache is not None:
                    cache.set_cross_kv(self.layer_idx, *kv)
            k, v = kv
        else:
            qx, kx, vx = self.qkv(x)
            if ve is not None:  # before the cache: decoding appends the mixed values
                lam = self.value_lambdas.to(vx.dtype)
                vx = lam[0] * vx + lam[1] * ve.to(vx.dtype)
            q = self._heads(qx, self.n_head)
            k, v = self._heads(kx, self.n_kv_head), self._heads(vx, self.n_kv_head)
            if self.qk_norm:
                q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
            if self.use_rope:
                assert rope is not None
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)

        if self.record is not None:
            y = self._explicit(q, k, v, mask, is_causal, self.record)
        else:
            y = sdpa(q, k, v, mask, is_causal, self.dropout if self.training else 0.0,
                     self.n_kv_head != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))

    def _explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        record: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """The same maths as SDPA, written out so the scores and weights can be recorded."""
        rep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if is_causal:
            tq, tk = scores.shape[-2:]
            mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(-1).to(q.dtype)
        record.append({"scores": scores.detach(), "weights": weights.detach()})
        return weights @ v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.d_ff is not None
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate_proj = Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up_proj = Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down_proj = Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The activations before down_proj (`model/quant.py`'s FusedMLP: gate and up in one
        matmul)."""
        if self.kind == "swiglu":
            return F.silu(self.gate_proj(x)) * self.up_proj(x)
        if self.kind == "gelu_tanh":
            return F.gelu(self.up_proj(x), approximate="tanh")
        if self.kind == "gelu":
            return F.gelu(self.up_proj(x))
        if self.kind == "relu2":
            return F.relu(self.up_proj(x)).square()
        return F.relu(self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(self.hidden(x)))


class Block(nn.Module):
    """Attention + MLP with residuals; pre-norm (GPT-2, Llama) or post-norm (2017, BERT)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.prenorm, self.causal, self.has_cross = cfg.prenorm, causal, cross
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg, layer_idx)
        if cross:
            self.cross_attn_layernorm = make_norm(cfg)
            self.cross_attn = Attention(cfg, layer_idx, cross=True)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _sub(self, x: torch.Tensor, norm: nn.Module, fn) -> torch.Tensor:  # noqa: ANN001
        if self.prenorm:
            return x + self.drop(fn(norm(x)))
        return norm(x + self.drop(fn(x)))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self._sub(x, self.input_layernorm,
                      lambda h: self.self_attn(h, mask, is_causal, rope, cache, ve=ve))
        if self.has_cross:  # a flag, not hasattr: a miss raises inside nn.Module every call
            x = self._sub(
                x,
                self.cross_attn_layernorm,
                lambda h: self.cross_attn(h, memory_mask, False, cache=cache, memory=memory),
            )
        return self._sub(x, self.post_attention_layernorm, self.mlp)
