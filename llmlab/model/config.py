"""One configuration dataclass describes every architecture the lab builds.

GPT-2, Llama, the original Transformer, BERT and encoder-decoder models differ only in
these fields; there is a single `Transformer` class.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PosKind = Literal["learned", "sinusoidal", "rope", "none"]
NormKind = Literal["layernorm", "rmsnorm"]
MlpKind = Literal["gelu", "gelu_tanh", "relu", "swiglu", "relu2"]


@dataclass
class ModelConfig:
    vocab_size: int = 50257  # token ids the embedding and LM head cover
    d_model: int = 768  # width of the residual stream
    n_layer: int = 12  # transformer blocks (the decoder's, in an encoder-decoder)
    n_head: int = 12  # attention (query) heads
    n_kv_head: int | None = None  # None means MHA (= n_head); fewer gives GQA
    head_dim: int | None = None  # None means d_model // n_head
    d_ff: int | None = None  # None means 4 * d_model
    max_seq_len: int = 1024  # longest sequence (learned positions, RoPE tables, KV cache)
    pos: PosKind = "learned"  # position encoding
    rope_theta: float = 10000.0  # RoPE base frequency
    norm: NormKind = "layernorm"  # normalisation layer
    norm_eps: float = 1e-5  # epsilon inside the norm's square root
    prenorm: bool = True  # False: the original paper's post-norm "Add & Norm"
    # MLP activation (swiglu: gated, three matrices; relu2: relu(x)², from Primer, So et al.
    # 2021, as in modded-nanogpt)
    mlp: MlpKind = "gelu_tanh"
    # Each head's q and k RMS-normalised (no gain) before RoPE: attention logits stay bounded
    # at high learning rates (Dehghani et al. 2023, ViT-22B; modded-nanogpt).
    qk_norm: bool = False
    # > 0: the logits become c·tanh(logits / c), bounded in (-c, c) (Gemma 2; modded-nanogpt
    # uses 15-30), so no token's logit runs away early in training. 0 disables.
    logit_softcap: float = 0.0
    # > 0: that many token-embedding tables of width n_kv_head * head_dim, mixed into
    # attention's values, v <- a v + b E[token] with learned (a, b) per layer (modded-nanogpt's
    # value embeddings, @KoszarskyB, records 2024-12-04 and -12-08, after the value residual of
    # Zhou et al. 2024, arXiv:2410.17897). Table j feeds layer j and layer n_layer - n + j
    # (the first and the last n layers, the U-net pattern); the layers between get none.
    value_embeds: int = 0
    bias: bool = True  # biases in the attention and MLP projections
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix
    causal: bool = True  # False: bidirectional encoder (BERT)
    type_vocab_size: int = 0  # BERT's token-type (segment) embeddings
    embed_norm: bool = False  # BERT normalises the summed embeddings
    final_norm: bool = True  # pre-norm stacks need a last norm; post-norm BERT has none
    lm_head: bool = True  # encoders used for embeddings carry no LM head
    embed_scale: bool = False  # the original paper multiplies embeddings by sqrt(d_model)
    dropout: float = 0.0  # dropout probability (embeddings, attention, residual)
    encoder_layers: int = 0  # > 0 makes an encoder-decoder with cross-attention
    pad_token_id: int | None = None  # padding token id
    bos_token_id: int | None = None  # beginning-of-sequence id, from the tokenizer
    eos_token_id: int | list[int] | None = None  # end-of-sequence id(s), from the tokenizer
    extra: dict[str, Any] = field(default_factory=dict)  # tokenizer/chat metadata

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if not 0 <= self.value_embeds <= self.n_layer:
            raise ValueError(f"value_embeds={self.value_embeds} must be in [0, n_layer="
                             f"{self.n_layer}]: a table per layer at most")
        if self.value_embeds and self.is_encoder_decoder:
            raise ValueError("value_embeds: only for a single stack (not encoder-decoder)")

    def value_table(self, layer: int) -> int | None:
        """The value-embedding table that feeds `layer`, or None."""
        n = self.value_embeds
        if layer < n:
            return layer
        if n and layer >= self.n_layer - n:
            return layer - (self.n_layer - n)
        return None

    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder_layers > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def num_params(self) -> int:
        """Parameters of the `Transformer` this config builds (shared matrices once), from the
        shapes alone: a 7B config is counted without allocating it."""
        assert self.head_dim is not None and self.n_kv_head is not None and self.d_ff is not None
        d, hd, ff, b = self.d_model, self.head_dim, self.d_ff, int(self.bias)
        norm = d if self.norm == "rmsnorm" else 2 * d  # LayerNorm has a bias too
        q, kv = self.n_head * hd, self.n_kv_head * hd
        attn = d * q + 2 * d * kv + q * d + b * (q + 2 * kv + d)  # q, k, v, o projections
        n_up = 2 if self.mlp == "swiglu" else 1  # swiglu has a gate beside the up projection
        mlp = n_up * (d * ff + b * ff) + ff * d + b * d
        block = 2 * norm + attn + mlp

        def stack(n_layer: int, cross: bool) -> int:  # without the token embedding
            n = n_layer * (block + cross * (norm + attn))
            n += self.max_seq_len * d if self.pos == "learned" else 0
            n += self.type_vocab_size * d
            return n + norm * (int(self.embed_norm) + int(self.final_norm))

        n = self.vocab_size * d + stack(self.n_layer, self.is_encoder_decoder)
        fed = sum(self.value_table(i) is not None for i in range(self.n_layer))
        n += self.value_embeds * self.vocab_size * kv + 2 * fed  # tables, (a, b) per layer
        if self.is_encoder_decoder:  # the encoder shares the token embedding
            n += stack(self.encoder_layers, False)
        if self.lm_head and not self.tie_embeddings:
            n += self.vocab_size * d
        return n


# Named shapes. Fields not given keep the defaults above (GPT-2 style).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(vocab_size=50257, d_model=768, n_layer=12, n_head=12, max_seq_len=1024),
    "llama": dict(
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_embeddings=False,
        norm_eps=1e-6,
    ),
    "smollm2-135m": dict(
        vocab_size=49152,
        d_model=576,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        d_ff=1536,
        max_seq_len=8192,
        pos="rope",
        rope_theta=100000.0,
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "bert": dict(
        vocab_size=30522,
        d_model=768,
        n_layer=12,
        n_head=12,
        max_seq_len=512,
        prenorm=False,
        mlp="gelu",
        causal=False,
        type_vocab_size=2,
        embed_norm=True,
        final_norm=False,
        lm_head=False,
        norm_eps=1e-12,
    ),
    "transformer-base": dict(  # Vaswani et al. 2017
        vocab_size=37000,
        d_model=512,
        n_layer=6,
        encoder_layers=6,
        n_head=8,
        d_ff=2048,
        pos="sinusoidal",
        prenorm=False,
        mlp="relu",
        embed_scale=True,
        final_norm=False,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
