"""How many parameters each fine-tuning method trains, and roughly how much memory it needs.

Counts follow PEFT's implementations exactly (tests build the same models with `peft`):
- LoRA on a Linear(d_in, d_out): A is (r, d_in), B is (d_out, r) -> r * (d_in + d_out).
- DoRA adds a learned magnitude per output feature -> + d_out per adapted module.
- Prompt tuning: num_virtual_tokens * hidden trainable embeddings.
- Prefix tuning (no projection): num_virtual_tokens * n_layers * 2 * kv_dim, a K and a V
  prefix per layer (PEFT's PrefixEncoder); with grouped-query attention the prefix lives
  in the KV heads' width, n_kv_heads * head_dim, not the hidden size.
- Bottleneck adapters (Houlsby et al. 2019, not in PEFT): two per layer, each
  down (hidden*m + m) and up (m*hidden + hidden).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Bytes per trained parameter with mixed-precision AdamW: bf16 weight + bf16 grad
# + fp32 master copy + two fp32 moments = 2 + 2 + 4 + 8.
TRAINED_BYTES = 16
FROZEN_BF16_BYTES = 2
# NF4 with double quantisation: 4 bits + ~0.127 bits of block constants per weight.
FROZEN_NF4_BYTES = (4 + 0.127) / 8


@dataclass(frozen=True)
class LlamaShape:
    """The numbers of a Llama-style decoder that parameter counts depend on."""

    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each per-layer Linear, by its PEFT target name."""
        h, q, kv = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        i = self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def total_params(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden
        emb = self.vocab * self.hidden
        head = 0 if self.tie_embeddings else emb
        return self.n_layers * per_layer + emb + head + self.hidden  # + final norm


LLAMA_31_8B = LlamaShape(4096, 32, 32, 8, 128, 14336, 128256)
LLAMA_2_13B = LlamaShape(5120, 40, 40, 40, 128, 13824, 32000)
SMOLLM2_135M = LlamaShape(576, 30, 9, 3, 64, 1536, 49152, tie_embeddings=True)


def _targets(shape: LlamaShape, targets: list[str]) -> list[tuple[int, int]]:
    shapes = shape.linear_shapes()
    bad = [t for t in targets if t not in shapes]
    if bad:
        raise ValueError(f"target_modules: unknown {bad}; choose from {sorted(shapes)}")
    return [shapes[t] for t in targets]


def lora_matrix_params(d_in: int, d_out: int, r: int) -> dict[str, int]:
    """One weight matrix: frozen W (d_out x d_in) vs the trained A (r x d_in) and B (d_out x r)."""
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    full = d_in * d_out
    lora = r * (d_in + d_out)
    return {"full": full, "A": r * d_in, "B": d_out * r, "lora": lora}


def lora_params(shape: LlamaShape, r: int, targets: list[str], dora: bool = False) -> int:
    """Trainable parameters of LoRA (or DoRA) on `targets` in every layer."""
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    per = sum(r * (a + b) + (b if dora else 0) for a, b in _targets(shape, targets))
    return shape.n_layers * per


def prompt_tuning_params(shape: LlamaShape, num_virtual_tokens: int) -> int:
    return num_virtual_tokens * shape.hidden


def prefix_tuning_params(shape: LlamaShape, num_virtual_tokens: int) -> int:
    return num_virtual_tokens * shape.n_layers * 2 * shape.n_kv_heads * shape.head_dim


def adapter_params(shape: LlamaShape, bottleneck: int) -> int:
    one = shape.hidden * bottleneck + bottleneck + bottleneck * shape.hidden + shape.hidden
    return shape.n_layers * 2 * one


@dataclass
class MethodCost:
    method: str
    trainable: int
    total: int
    trainable_pct: float
    memory_gb: float  # weights + grads + optimizer state; activations excluded
    note: str


def compare_methods(
    shape: LlamaShape,
    r: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    num_virtual_tokens: int = 20,
    bottleneck: int = 64,
) -> list[dict]:
    """Trainable parameters and training memory of each method on the same base model."""
    base = shape.total_params()
    gb = 1024**3

    def row(method: str, trainable: int, frozen_bytes: float, note: str) -> dict:
        mem = base * frozen_bytes + trainable * TRAINED_BYTES
        if method == "full":
            mem = base * TRAINED_BYTES
        total = base if method == "full" else base + trainable
        pct = 100.0 * trainable / total
        return asdict(MethodCost(method, trainable, total, pct, mem / gb, note))

    lora = lora_params(shape, r, list(targets))
    return [
        row("full", base, 0, "every weight trained: bf16 weight+grad, fp32 master+Adam"),
        row("lora", lora, FROZEN_BF16_BYTES, f"r={r} on {', '.join(targets)}; base frozen bf16"),
        row("qlora", lora, FROZEN_NF4_BYTES, "LoRA over a 4-bit NF4 base (double quant)"),
        row(
            "dora",
            lora_params(shape, r, list(targets), dora=True),
            FROZEN_BF16_BYTES,
            "LoRA direction + a trained magnitude per output feature",
        ),
        row(
            "adapters",
            adapter_params(shape, bottleneck),
            FROZEN_BF16_BYTES,
            f"Houlsby bottleneck m={bottleneck}, two per layer",
        ),
        row(
            "prefix",
            prefix_tuning_params(shape, num_virtual_tokens),
            FROZEN_BF16_BYTES,
            f"{num_virtual_tokens} virtual K/V tokens in every layer",
        ),
        row(
            "prompt",
            prompt_tuning_params(shape, num_virtual_tokens),
            FROZEN_BF16_BYTES,
            f"{num_virtual_tokens} soft-prompt embeddings at the input only",
        ),
    ]


def adamw_memory(frozen_bytes: int, trainable: int, total: int, bytes_per: int = 4
                 ) -> dict[str, int]:
    """What a training run holds besides activations, in bytes: the frozen weights as stored,
    and for each trained parameter its weight, its gradient and AdamW's two moments (the
    Trainer keeps all three in the weight's dtype, fp32: 16 bytes each). `full_finetune` is
    the same run training all `total` parameters: the saving LoRA buys."""
    weights, grads, adam = trainable * bytes_per, trainable * bytes_per, 2 * trainable * bytes_per
    return {"frozen_weights": frozen_bytes, "trained_weights": weights, "gradients": grads,
            "adam_moments": adam, "total": frozen_bytes + weights + grads + adam,
            "full_finetune": 4 * total * bytes_per}
