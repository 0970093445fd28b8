"""The one transformer: GPT-2, Llama, BERT and the encoder-decoder Transformer are configs of it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmlab.model.cache import KVCache
from llmlab.model.config import ModelConfig
from llmlab.model.layers import Block, make_norm
from llmlab.model.linear import Linear
from llmlab.model.loss import (
    IGNORE_INDEX,
    kept_rows,
    linear_cross_entropy,
    linear_token_logprobs,
)
from llmlab.model.positions import RopeTable, sinusoidal_table


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None with targets, or without an LM head
    hidden: torch.Tensor  # (B, T, d_model) after the final norm
    # With targets: the cross-entropy, -log p(target), fp32. reduction="mean": a scalar over
    # the kept targets; "none": (B, T) per token, 0 where the target is ignored (-100).
    loss: torch.Tensor | None = None


def build_mask(
    t: int, past: int, causal: bool, key_valid: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Return (bool mask broadcastable to (B, H, t, past+t), is_causal) for SDPA.

    Takes SDPA's fast paths where it can: no mask for one query over a full cache, and
    `is_causal` for an unpadded prefill."""
    if key_valid is None:
        if not causal or t == 1:
            return None, False
        if past == 0:
            return None, True
    tk = past + t
    mask = torch.ones(t, tk, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril(past)
    mask = mask[None, None]
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :tk].bool()
        # A padding query may see no key at all; let it see itself so softmax stays finite.
        diag = torch.zeros(t, tk, dtype=torch.bool, device=device)
        diag[torch.arange(t), past + torch.arange(t)] = True
        mask = mask | diag
    return mask, False


def doc_mask(doc_ids: torch.Tensor, causal: bool, past: int = 0,
             key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, T, past+T) mask for packed documents: a query sees only keys of its own document
    (block-diagonal, and causal); `past` leading keys (a prefix) are seen by every query."""
    b, t = doc_ids.shape
    mask = doc_ids[:, :, None] == doc_ids[:, None, :]
    if causal:
        mask = mask & torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    if past:
        mask = torch.cat([mask.new_ones(b, t, past), mask], dim=2)
    if key_valid is not None:
        mask = mask & key_valid[:, None, : past + t].bool()
    return mask[:, None]


class Stack(nn.Module):
    """Embeddings, a stack of blocks, and the final norm."""

    def __init__(self, cfg: ModelConfig, n_layer: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        elif cfg.pos == "sinusoidal":
            table = sinusoidal_table(cfg.max_seq_len, cfg.d_model)
            self.register_buffer("pos_table", table, persistent=False)
        if cfg.pos == "rope":
            assert cfg.head_dim is not None
            self.rope = RopeTable(cfg.head_dim, cfg.rope_theta, cfg.max_seq_len)
        if cfg.type_vocab_size:
            self.embed_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        if cfg.embed_norm:
            self.embed_norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i, causal, cross) for i in range(n_layer))
        assert cfg.n_kv_head is not None and cfg.head_dim is not None
        kv = cfg.n_kv_head * cfg.head_dim
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, kv)
                                          for _ in range(cfg.value_embeds))
        if cfg.final_norm:
            self.norm = make_norm(cfg)
        # Activation checkpointing (set by the Trainer): keep only each block's input and run
        # the block again in backward, instead of holding its ~20 saved tensors per token.
        self.checkpoint = False

    def embed(
        self, ids: torch.Tensor, positions: torch.Tensor, token_types: torch.Tensor | None
    ) -> torch.Tensor:
        cfg = self.cfg
        x = self.embed_tokens(ids)
        if cfg.embed_scale:
            x = x * math.sqrt(cfg.d_model)
        if cfg.pos == "learned":
            x = x + self.embed_positions(positions)
        elif cfg.pos == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        if cfg.type_vocab_size:
            tt = token_types if token_types is not None else torch.zeros_like(ids)
            x = x + self.embed_types(tt)
        if cfg.embed_norm:
            x = self.embed_norm(x)
        return self.drop(x)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        token_types: torch.Tensor | None = None,
        cache: KVCache | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = ids.shape[1]
        static = cache is not None and cache.static
        if static and positions is None:
            raise ValueError("a static cache needs explicit positions (and cache.slots)")
        past = cache.length if cache is not None else 0  # a static cache keeps length 0
        if past + t > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {past + t} tokens exceeds the model's context of "
                f"{self.cfg.max_seq_len}"
            )
        if positions is None:
            if attention_mask is not None:
                # Left padding: real tokens count from 0 in every row.
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                positions = torch.arange(past, past + t, device=ids.device)[None]
        x = self.embed(ids, positions, token_types)
        rope = self.rope(positions, x.dtype) if self.cfg.pos == "rope" else None
        if doc_ids is not None:
            mask, is_causal = doc_mask(doc_ids, self.causal, past, attention_mask), False
        elif static:
            assert cache is not None
            mask, is_causal = cache.static_mask(attention_mask), False
        else:
            mask, is_causal = build_mask(t, past, self.causal, attention_mask, ids.device)
        mem_mask = None
        if memory_mask is not None:
            mem_mask = memory_mask[:, None, None, :].bool()
        ves = self.value_embedding(ids)
        for layer, ve in zip(self.layers, ves, strict=True):
            args = (x, mask, is_causal, rope, cache, memory, mem_mask, ve)
            if self.checkpoint and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        if cache is not None:
            cache.advance()
        return self.norm(x) if self.cfg.final_norm else x

    def value_embedding(self, ids: torch.Tensor) -> list[torch.Tensor | None]:
        """Each layer's value embedding of `ids` (None where no table feeds it); a table
        shared by two layers is looked up once."""
        if not self.value_embeds:  # the usual model: nothing to look up on each forward
            return [None] * len(self.layers)
        tables = [e(ids) for e in self.value_embeds]
        out: list[torch.Tensor | None] = []
        for i in range(len(self.layers)):  # a plain loop: torch.compile can't trace a walrus
            j = self.cfg.value_table(i)  # inside a comprehension ("uninitialized cell")
            out.append(None if j is None else tables[j])
        return out


class Transformer(nn.Module):
    """Decoder-only, encoder-only or encoder-decoder, by configuration."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc_dec = cfg.is_encoder_decoder
        self.model = Stack(cfg, cfg.n_layer, causal=cfg.causal, cross=enc_dec)
        if enc_dec:
            self.encoder = Stack(cfg, cfg.encoder_layers, causal=False, cross=False)
            # The 2017 paper shares one embedding matrix between encoder, decoder and output.
            self.encoder.embed_tokens.weight = self.model.embed_tokens.weight
        if cfg.lm_head:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init)

    def tie_and_fill_buffers(self) -> None:
        """Re-tie shared weights and rebuild computed buffers (after a meta-device load)."""
        cfg = self.cfg
        if cfg.lm_head and cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        stacks = [self.model] + ([self.encoder] if cfg.is_encoder_decoder else [])
        for s in stacks[1:]:
            s.embed_tokens.weight = self.model.embed_tokens.weight
        if cfg.pos == "sinusoidal":
            for s in stacks:
                dev = s.embed_tokens.weight.device
                s.pos_table = sinusoidal_table(cfg.max_seq_len, cfg.d_model).to(dev)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def encode(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states of the encoder (the only stack, for BERT-style models)."""
        stack = self.encoder if self.cfg.is_encoder_decoder else self.model
        return stack(ids, attention_mask, token_types=token_types)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: Literal["mean", "none"] = "mean",
        cache: KVCache | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        encoder_input_ids: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
        last_only: bool = False,
    ) -> ModelOutput:
        """Hidden states, and either the logits or, given `targets`, the cross-entropy.

        `targets` (B, T) are the tokens each position should predict (the inputs shifted
        left; -100 = ignored). The LM head and the loss then run fused in chunks
        (model/loss.py): the (B, T, vocab) logits are never stored. `reduction="mean"`
        gives the mean over kept targets (the training loss); `"none"` gives each token's
        -log softmax(logits / temperature)[target] (RL's log-probabilities, negated).

        `attention_mask` (B, past + T) marks real tokens (1) and padding (0). `doc_ids`
        (B, T) packs several documents in a row: attention stays within a document (pass
        `positions` restarting at 0 for each, as if it were alone). `last_only` computes
        the logits of the final position only (generation)."""
        memory = None
        if self.cfg.is_encoder_decoder and (cache is None or cache.cross_kv(0) is None):
            if encoder_input_ids is None:
                raise ValueError("an encoder-decoder model needs encoder_input_ids")
            memory = self.encode(encoder_input_ids, encoder_attention_mask)
        h = self.model(input_ids, attention_mask, positions, cache=cache, memory=memory,
                       memory_mask=encoder_attention_mask, doc_ids=doc_ids)
        if targets is not None:
            return ModelOutput(None, h, self._cross_entropy(h, targets, reduction, temperature))
        logits = None
        if self.cfg.lm_head:
            logits = self._logits(h[:, -1:] if last_only else h)
        return ModelOutput(logits, h)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        z, c = self.lm_head(h), self.cfg.logit_softcap
        return c * torch.tanh(z / c) if c else z

    def _cross_entropy(self, h: torch.Tensor, targets: torch.Tensor, reduction: str,
                       temperature: float) -> torch.Tensor:
        """-log softmax(lm_head(h) / temperature)[targets], fp32: the mean over the kept
        targets, or per token (0 where ignored)."""
        head = self.lm_head
        # A wrapped head (LoRA, quantised) computes its own logits; a plain one runs fused.
        fused = type(head) in (Linear, nn.Linear) and head.bias is None \
            and not self.cfg.logit_softcap  # the fused loss computes plain logits
        if reduction == "none":
            keep = targets != IGNORE_INDEX
            y = targets.masked_fill(~keep, 0)
            if fused:
                logp = linear_token_logprobs(h, head.weight, y, temperature)
            else:
                z = self._logits(h).float() / temperature
                logp = z.log_softmax(-1).gather(-1, y[..., None]).squeeze(-1)
            return (-logp).masked_fill(~keep, 0.0)
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if temperature != 1.0:
            raise ValueError("temperature scales per-token scores: use reduction='none'")
        h, targets = kept_rows(h, targets)  # the LM head skips ignored positions
        if fused:
            return linear_cross_entropy(h, head.weight, targets)
        logits = self._logits(h).float()
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(),
                               ignore_index=IGNORE_INDEX)

    def num_params(self, trainable_only: bool = False) -> int:
        seen: set[int] = set()
        n = 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            n += p.numel()
        return n


def checkpoint_blocks(model: nn.Module, on: bool = True) -> None:
    """Activation checkpointing for every stack inside `model` (under any adapter or DDP
    wrapper): the same numbers, less memory (blocks run twice). Eval and decoding skip it."""
    for m in model.modules():
        if isinstance(m, Stack):
            m.checkpoint = on
