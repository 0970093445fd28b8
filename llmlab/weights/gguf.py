"""Import llama-architecture GGUF files (llama.cpp's format) into our Transformer.

Quantised blocks are dequantised to fp32 by the `gguf` package. llama.cpp's converter
permutes the rows of Q and K so that RoPE rotates adjacent pairs; we un-permute them back
to the `rotate_half` layout that HF Llama and our attention use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llmlab.fileformat import CorruptFileError, check_gguf
from llmlab.model.config import ModelConfig
from llmlab.model.positions import unpermute_llamacpp

_LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def open_gguf(path: str | Path) -> Any:
    from gguf import GGUFReader  # its import takes most of a second: only when a GGUF is read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    check_gguf(path)  # before the reader: it allocates whatever the header claims
    try:
        return GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors...
        raise CorruptFileError(
            f"{path}: not a readable GGUF file (truncated or corrupt?): {e}"
        ) from e


def field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_config(reader: Any, path: str | Path = "<gguf>") -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    a = "llama."
    n_head = int(field(reader, a + "attention.head_count"))
    d = int(field(reader, a + "embedding_length"))
    names = {t.name for t in reader.tensors}
    eos = field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(
            field(reader, a + "vocab_size") or len(field(reader, "tokenizer.ggml.tokens"))
        ),
        d_model=d,
        n_layer=int(field(reader, a + "block_count")),
        n_head=n_head,
        n_kv_head=int(field(reader, a + "attention.head_count_kv", n_head)),
        head_dim=int(field(reader, a + "rope.dimension_count", d // n_head)),
        d_ff=int(field(reader, a + "feed_forward_length")),
        max_seq_len=int(field(reader, a + "context_length", 2048)),
        pos="rope",
        rope_theta=float(field(reader, a + "rope.freq_base", 10000.0)),
        norm="rmsnorm",
        norm_eps=_round_eps(float(field(reader, a + "attention.layer_norm_rms_epsilon", 1e-5))),
        mlp="swiglu",
        bias=False,
        tie_embeddings="output.weight" not in names,
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=int(eos) if eos is not None else None,
        pad_token_id=field(reader, "tokenizer.ggml.padding_token_id"),
    )


def _round_eps(eps: float) -> float:
    # float32 storage turns 1e-5 into 9.99999975e-06; snap back to the decimal it came from.
    return float(f"{eps:.6g}")


def load_gguf(
    path: str | Path, progress: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from gguf.quants import dequantize  # as open_gguf

    reader = open_gguf(path)
    cfg = gguf_config(reader, path)
    assert cfg.n_kv_head is not None
    sd: dict[str, torch.Tensor] = {}
    tensors = reader.tensors
    if progress:
        tensors = tqdm(tensors, desc=f"dequantising {Path(path).name}", unit="tensor", leave=False)
    try:
        for t in tensors:
            arr = dequantize(t.data, t.tensor_type)
            w = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
            name = t.name
            if name == "token_embd.weight":
                sd["model.embed_tokens.weight"] = w
            elif name == "output_norm.weight":
                sd["model.norm.weight"] = w
            elif name == "output.weight":
                sd["lm_head.weight"] = w
            elif name.startswith("blk."):
                _, i, kind, _ = name.split(".")
                if kind == "attn_q":
                    w = unpermute_llamacpp(w, cfg.n_head)
                elif kind == "attn_k":
                    w = unpermute_llamacpp(w, cfg.n_kv_head)
                if kind not in _LAYER_MAP:
                    continue  # e.g. rope_freqs: recomputed from rope_theta
                sd[f"model.layers.{i}.{_LAYER_MAP[kind]}.weight"] = w
    except (ValueError, IndexError) as e:
        raise CorruptFileError(f"{path}: tensor data could not be read (truncated?): {e}") from e
    return cfg, sd
