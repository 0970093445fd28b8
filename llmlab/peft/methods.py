"""Prompt tuning, prefix tuning and bottleneck adapters.

- Prompt tuning (Lester et al. 2021): P trained embeddings before the input embeddings;
  PEFT's file holds them as `prompt_embeddings` (P, hidden).
- Prefix tuning (Li & Liang 2021, PEFT without the projection): P trained keys and values
  in every layer, stored as PEFT does: `prompt_embeddings` (P, n_layer * 2 * kv_dim), columns
  ordered (layer, k|v, kv head, head_dim). Real tokens take positions P.. as in PEFT, where
  the prefix is a past KV cache; prefix keys are not rotated (they are stored, not computed).
- Generation with a KV cache (`llmlab generate/chat --adapter`): the caller's cache counts real
  tokens only; the base model runs on an inner cache with the P virtual positions in front,
  seeded with the prefix K/V (prefix tuning) or filled by the virtual tokens at prefill (prompt
  tuning), so decoding computes exactly what a full forward over the sequence computes.
- Bottleneck adapters (Houlsby et al. 2019; not in PEFT): after attention and after the MLP of
  every block, y + up(gelu(down(y))), `up` zero-initialised so training starts at the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.cache import KVCache
from llmlab.model.loss import IGNORE_INDEX
from llmlab.peft.base import PeftModel


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


class _VirtualTokens(PeftModel):
    """Shared by prompt and prefix tuning: n virtual positions before the real tokens."""

    def __init__(self, model: nn.Module, method: str, n: int, config: dict[str, Any]) -> None:
        _freeze(model)
        super().__init__(model, method, config)
        self.n = n
        self.disabled = False  # set by disable_adapters (peft/base.py): the base model alone

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean", cache: KVCache | None = None, *,
                attention_mask: torch.Tensor | None = None, **kw: Any) -> Any:
        kw.update(targets=targets, reduction=reduction)
        if self.disabled:
            return self.base_model(input_ids, cache=cache, attention_mask=attention_mask, **kw)
        self._check(kw)
        if attention_mask is not None:  # the virtual positions are always attended to
            ones = attention_mask.new_ones(input_ids.shape[0], self.n)
            attention_mask = torch.cat([ones, attention_mask], 1)
        return self._forward(input_ids, attention_mask, cache, **kw)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 cache: KVCache | None, **kw: Any) -> Any:
        """The forward with the adapter on; `attention_mask` already covers the n virtual
        positions."""
        raise NotImplementedError

    def _inner(self, cache: KVCache) -> tuple[KVCache, bool]:
        """(the cache the base model sees, whether this forward is the prefill)."""
        inner = getattr(cache, "_virtual", None)
        if inner is not None:
            return inner, False
        if cache.static or cache.length:
            raise ValueError(f"{self.method} tuning needs a fresh dynamic KV cache (the virtual "
                             "tokens go in front at the first forward)")
        inner = KVCache(self.cfg, cache.batch_size, cache.max_len + self.n, cache.k[0].device,
                        cache.k[0].dtype)
        cache._virtual = inner  # type: ignore[attr-defined]
        return inner, True

    def _check(self, kw: dict[str, Any]) -> None:
        if kw.get("doc_ids") is not None:
            raise ValueError(f"{self.method} tuning runs without packed documents")
        kw.pop("positions", None)  # real tokens take positions n.., from the mask or the cache


class PromptTuning(_VirtualTokens):
    def __init__(self, model: nn.Module, n: int, config: dict[str, Any]) -> None:
        super().__init__(model, "prompt", n, config)
        # PEFT's random init is nn.Embedding's, N(0, 1).
        model.prompt_embeddings = nn.Parameter(torch.randn(n, model.cfg.d_model))
        self._batch = 0
        model.model.embed_tokens.register_forward_hook(self._replace)

    def _replace(self, mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if not self._batch:
            return None
        p = self.base_model.prompt_embeddings.to(out.dtype)
        return torch.cat([p.expand(out.shape[0], -1, -1), out[:, self.n:]], dim=1)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 cache: KVCache | None, **kw: Any) -> Any:
        b = input_ids.shape[0]
        inner, prefill = self._inner(cache) if cache is not None else (None, True)
        if not prefill:  # decoding: the virtual tokens are in the inner cache already
            out = self.base_model(input_ids, cache=inner, attention_mask=attention_mask, **kw)
            cache.length = inner.length - self.n  # type: ignore[union-attr]
            return out
        ids = torch.cat([input_ids.new_zeros(b, self.n), input_ids], dim=1)
        tg = kw["targets"]
        if tg is not None:  # the virtual positions predict nothing
            kw["targets"] = torch.cat([tg.new_full((b, self.n), IGNORE_INDEX), tg], dim=1)
        self._batch = b  # placeholders 0..n-1 become the prompt in the embedding hook
        try:
            out = self.base_model(ids, cache=inner, attention_mask=attention_mask, **kw)
        finally:
            self._batch = 0
        if cache is not None:
            cache.length = inner.length - self.n  # type: ignore[union-attr]
        if out.logits is not None and not kw.get("last_only"):
            out.logits = out.logits[:, self.n:]
        if out.loss is not None and out.loss.dim():  # reduction="none": per token
            out.loss = out.loss[:, self.n:]
        out.hidden = out.hidden[:, self.n:]
        return out


class _PrefixCache:
    """Looks like a KV cache holding P past positions: each layer's trained K and V."""

    static = False

    def __init__(self, kv: torch.Tensor, n_layer: int) -> None:
        self.kv, self.length = kv, kv.shape[3]  # (n_layer*2, B, heads, P, hd)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.kv[2 * layer].to(k.dtype), self.kv[2 * layer + 1].to(v.dtype)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self) -> None:
        pass


class PrefixTuning(_VirtualTokens):
    def __init__(self, model: nn.Module, n: int, config: dict[str, Any]) -> None:
        super().__init__(model, "prefix", n, config)
        c = model.cfg
        self.heads, self.hd, self.layers = c.n_kv_head, c.head_dim, c.n_layer
        width = c.n_layer * 2 * c.n_kv_head * c.head_dim
        model.prompt_embeddings = nn.Parameter(torch.randn(n, width))

    def _kv(self, b: int) -> torch.Tensor:
        """(n_layer * 2, B, kv heads, P, head_dim): each layer's prefix K, then V."""
        e = self.base_model.prompt_embeddings
        kv = e.view(self.n, self.layers * 2, self.heads, self.hd).permute(1, 2, 0, 3)
        return kv[:, None].expand(-1, b, -1, -1, -1)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 cache: KVCache | None, **kw: Any) -> Any:
        b = input_ids.shape[0]
        if cache is None:
            return self.base_model(input_ids, cache=_PrefixCache(self._kv(b), self.layers),
                                   attention_mask=attention_mask, **kw)
        inner, prefill = self._inner(cache)
        if prefill:  # the prefix is the first n positions of every layer's cache
            kv = self._kv(b)
            for layer in range(self.layers):
                inner.k[layer][:, :, : self.n] = kv[2 * layer]
                inner.v[layer][:, :, : self.n] = kv[2 * layer + 1]
            inner.length = self.n
        out = self.base_model(input_ids, cache=inner, attention_mask=attention_mask, **kw)
        cache.length = inner.length - self.n
        return out


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, m: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(hidden, m), nn.Linear(m, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(F.gelu(self.down(y)))


class WithAdapter(nn.Module):
    def __init__(self, base: nn.Module, hidden: int, m: int) -> None:
        super().__init__()
        self.base_layer, self.adapter = base, Bottleneck(hidden, m)
        self.disabled = False  # set by disable_adapters (peft/base.py): the base layer alone

    def forward(self, *a: Any, **kw: Any) -> torch.Tensor:
        out = self.base_layer(*a, **kw)
        return out if self.disabled else self.adapter(out)


def add_adapters(model: nn.Module, m: int, config: dict[str, Any]) -> PeftModel:
    _freeze(model)
    d = model.cfg.d_model
    for block in model.model.layers:
        block.self_attn = WithAdapter(block.self_attn, d, m)
        block.mlp = WithAdapter(block.mlp, d, m)
    return PeftModel(model, "adapter", config)


def build(model: nn.Module, method: str, base_name: str | None, **opts: Any) -> PeftModel:
    cfg: dict[str, Any] = {"task_type": "CAUSAL_LM", "base_model_name_or_path": base_name}
    if method in ("prompt", "prefix"):
        n = int(opts.get("num_virtual_tokens", 20))
        if n < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {n}")
        c = model.cfg
        cfg.update(num_virtual_tokens=n, token_dim=c.d_model, num_layers=c.n_layer,
                   num_attention_heads=c.n_head, num_transformer_submodules=1,
                   inference_mode=True)
        if method == "prompt":
            cfg.update(peft_type="PROMPT_TUNING", prompt_tuning_init="RANDOM")
            return PromptTuning(model, n, cfg)
        cfg.update(peft_type="PREFIX_TUNING", prefix_projection=False)
        return PrefixTuning(model, n, cfg)
    m = int(opts.get("bottleneck", 64))
    cfg.update(peft_type="BOTTLENECK_ADAPTER", bottleneck=m, placement="after attn and mlp")
    return add_adapters(model, m, cfg)


def from_config(model: nn.Module, path: Path, cfg: dict[str, Any]) -> PeftModel:
    kinds = {"PROMPT_TUNING": "prompt", "PREFIX_TUNING": "prefix",
             "BOTTLENECK_ADAPTER": "adapter"}
    kind = kinds.get(cfg["peft_type"])
    if kind is None:
        raise ValueError(f"{path}: field 'peft_type'={cfg['peft_type']!r} is not supported; "
                         f"valid: LORA, {', '.join(kinds)}")
    if cfg.get("prefix_projection"):
        raise ValueError(f"{path}: field 'prefix_projection'=true is not supported")
    opts = {"num_virtual_tokens": cfg.get("num_virtual_tokens", 20),
            "bottleneck": cfg.get("bottleneck", 64)}
    return build(model, kind, cfg.get("base_model_name_or_path"), **opts)
