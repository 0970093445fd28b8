"""The one transformer: GPT-2, Llama, BERT and the encoder-decoder Transformer are configs of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.cache import KVCache
from llmlab.model.config import ModelConfig
from llmlab.model.layers import Block, make_norm
from llmlab.model.linear import Linear
from llmlab.model.loss import IGNORE_INDEX, linear_cross_entropy, linear_token_logprobs
from llmlab.model.positions import rope_cos_sin, sinusoidal_table


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, vocab), None when the model has no LM head
    hidden: torch.Tensor  # (B, T, d_model) after the final norm
    # explain mode only: per layer {"scores", "weights"}: (B, H, Tq, Tk) each
    attentions: list[dict] = field(default_factory=list)
    cross_attentions: list[dict] = field(default_factory=list)
    encoder_attentions: list[dict] = field(default_factory=list)
    loss: torch.Tensor | None = None  # mean next-token cross-entropy, when labels were given
    logprobs: torch.Tensor | None = None  # (B, T) fp32 log p(logprobs_of), when it was given


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
        if cfg.type_vocab_size:
            self.embed_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        if cfg.embed_norm:
            self.embed_norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i, causal, cross) for i in range(n_layer))
        if cfg.final_norm:
            self.norm = make_norm(cfg)

    def _rope(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.cfg.head_dim is not None
        if torch.compiler.is_compiling():
            # From the positions, in the graph (one fused kernel): building the cached table
            # here would be a side effect that dynamo guards on, so the second call would
            # recompile the whole model.
            return rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, dtype)
        # One table for the whole context, built on first use; steps then only index it.
        key = (positions.device, dtype)
        if getattr(self, "_rope_key", None) != key:
            pos = torch.arange(self.cfg.max_seq_len, device=positions.device)
            self._rope_table = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, dtype)
            self._rope_key = key
        cos, sin = self._rope_table
        if positions.shape[0] == 1:
            return cos[positions[0]][None], sin[positions[0]][None]
        return cos[positions], sin[positions]

    def _static_mask(self, cache: KVCache, key_valid: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, T, max_len): a query in slot s sees filled, non-padding slots up to s."""
        assert cache.slots is not None
        keys = torch.arange(cache.max_len, device=cache.slots.device)
        mask = (keys[None, :] <= cache.slots[:, None])[None, None]
        if key_valid is not None:
            # Each query also sees its own slot, so a padding row never has an empty softmax.
            own = (keys[None, :] == cache.slots[:, None])[None, None]
            mask = (mask & key_valid[:, None, None, :].bool()) | own
        return mask

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
        explain: list | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t = ids.shape
        cfg = self.cfg
        static = cache is not None and cache.static
        if static and positions is None:
            raise ValueError("a static cache needs explicit positions (and cache.slots)")
        past = cache.length if cache is not None and not static else 0
        if past + t > cfg.max_seq_len:
            raise ValueError(
                f"sequence of {past + t} tokens exceeds the model's context of {cfg.max_seq_len}"
            )
        if positions is None:
            if attention_mask is not None:
                # Left padding: real tokens count from 0 in every row.
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                positions = torch.arange(past, past + t, device=ids.device)[None]
        x = self.embed(ids, positions, token_types)
        rope = None
        if cfg.pos == "rope":
            rope = self._rope(positions, x.dtype)
        if doc_ids is not None:
            mask, is_causal = doc_mask(doc_ids, self.causal, past, attention_mask), False
        elif cache is not None and cache.static:
            mask, is_causal = self._static_mask(cache, attention_mask), False
        else:
            mask, is_causal = build_mask(t, past, self.causal, attention_mask, ids.device)
        mem_mask = None
        if memory_mask is not None:
            mem_mask = memory_mask[:, None, None, :].bool()
        for layer in self.layers:
            ex = None
            if explain is not None:
                ex = {"self": [], "cross": []}
                explain.append(ex)
            x = layer(x, mask, is_causal, rope, cache, memory, mem_mask, ex)
        if cache is not None and not cache.static:
            cache.advance()
        if cfg.final_norm:
            x = self.norm(x)
        return x


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
        explain: list | None = None,
    ) -> torch.Tensor:
        """Hidden states of the encoder (the only stack, for BERT-style models)."""
        stack = self.encoder if self.cfg.is_encoder_decoder else self.model
        return stack(ids, attention_mask, token_types=token_types, explain=explain)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        token_types: torch.Tensor | None = None,
        cache: KVCache | None = None,
        encoder_input_ids: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_hidden: torch.Tensor | None = None,
        explain: bool = False,
        last_only: bool = False,
        doc_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_mask: torch.Tensor | None = None,
        logprobs_of: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> ModelOutput:
        """`attention_mask` (B, past + T) marks real tokens (1) and padding (0).

        `doc_ids` (B, T) packs several documents in a row: attention stays within a document
        (pass `positions` restarting at 0 for each, as if it were alone).

        `last_only` computes logits for the final position only (generation); `logits_mask`
        (B, T) bool for the selected positions only, as (n_selected, vocab) (a loss that
        ignores most positions, such as SFT's assistant-only one, skips the LM head there).

        `labels` (B, T), aligned with the inputs (already shifted; -100 = ignore), returns the
        mean cross-entropy as `loss` instead of logits: the output projection and the loss run
        fused (model/loss.py), so the (B, T, vocab) logits are never stored.

        `logprobs_of` (B, T) token ids returns `logprobs`, log softmax(logits / temperature) at
        those ids (RL's per-token log-probabilities), also without storing the logits."""
        ex: list | None = [] if explain else None
        enc_ex: list | None = [] if explain else None
        if self.cfg.is_encoder_decoder and encoder_hidden is None:
            need = cache is None or cache.cross_kv(0) is None
            if need:
                if encoder_input_ids is None:
                    raise ValueError("an encoder-decoder model needs encoder_input_ids")
                encoder_hidden = self.encode(
                    encoder_input_ids, encoder_attention_mask, explain=enc_ex
                )
        h = self.model(
            input_ids,
            attention_mask,
            positions,
            token_types,
            cache,
            memory=encoder_hidden,
            memory_mask=encoder_attention_mask,
            explain=ex,
            doc_ids=doc_ids,
        )
        logits = loss = logprobs = None
        if labels is not None:
            loss = self.loss(h, labels)
        elif logprobs_of is not None:
            logprobs = self.token_logprobs(h, logprobs_of, temperature)
        elif self.cfg.lm_head:
            logits = self.lm_head(h[:, -1:] if last_only else
                                  h[logits_mask] if logits_mask is not None else h)
        out = ModelOutput(logits=logits, hidden=h, loss=loss, logprobs=logprobs)
        if explain:
            assert ex is not None and enc_ex is not None
            out.attentions = [e["self"][0] for e in ex]
            out.cross_attentions = [e["cross"][0] for e in ex if e["cross"]]
            out.encoder_attentions = [e["self"][0] for e in enc_ex]
        return out

    def loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the LM head's logits on `h` against `labels` (-100 ignored)."""
        head = self.lm_head
        if type(head) in (Linear, nn.Linear) and head.bias is None:
            return linear_cross_entropy(h, head.weight, labels)
        # A wrapped head (LoRA, quantised) computes its own logits; the loss stays fp32.
        logits = head(h).float()
        return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX)

    def token_logprobs(self, h: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0
                       ) -> torch.Tensor:
        """log softmax(LM head(h) / temperature)[ids], fp32, shape of `ids`."""
        head = self.lm_head
        if type(head) in (Linear, nn.Linear) and head.bias is None:
            return linear_token_logprobs(h, head.weight, ids, temperature)
        # A wrapped head (LoRA, quantised) computes its own logits.
        z = head(h).float() / temperature
        return z.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)

    def num_params(self, trainable_only: bool = False) -> int:
        seen: set[int] = set()
        n = 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            n += p.numel()
        return n
