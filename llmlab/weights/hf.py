"""HF interop: our configs and state dicts to and from `config.json` + `model.safetensors`.

Llama keys are ours already (the module names match). GPT-2 fuses Q/K/V into `c_attn` and
stores Conv1D weights transposed; BERT nests its names. Each family is one mapping here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmlab.model.config import ModelConfig
from llmlab.weights.io import atomic_dir, load_safetensors, save_safetensors


class NoHFEquivalent(ValueError):
    pass


def hf_family(cfg: ModelConfig) -> str:
    """Which transformers architecture represents this config exactly."""
    if cfg.is_encoder_decoder:
        raise NoHFEquivalent("encoder-decoder configs have no transformers equivalent to export to")
    own = [n for n, on in (("qk_norm", cfg.qk_norm), ("logit_softcap", cfg.logit_softcap),
                           ("mlp=relu2", cfg.mlp == "relu2"),
                           ("value_embeds", cfg.value_embeds)) if on]
    if own:  # a Llama config would load, and compute a different model
        raise NoHFEquivalent(f"{', '.join(own)}: no transformers architecture computes this, "
                             "so an HF export would be a different model")
    mha = cfg.n_kv_head == cfg.n_head and cfg.head_dim * cfg.n_head == cfg.d_model
    if (
        cfg.causal
        and cfg.pos == "rope"
        and cfg.norm == "rmsnorm"
        and cfg.mlp == "swiglu"
        and cfg.prenorm
        and cfg.final_norm
        and not cfg.type_vocab_size
        and not cfg.embed_norm
        and not cfg.embed_scale
    ):
        return "llama"
    if (
        cfg.causal
        and cfg.pos == "learned"
        and cfg.norm == "layernorm"
        and cfg.prenorm
        and cfg.mlp == "gelu_tanh"
        and cfg.bias
        and cfg.tie_embeddings
        and mha
        and cfg.final_norm
        and not cfg.type_vocab_size
        and not cfg.embed_norm
        and not cfg.embed_scale
    ):
        return "gpt2"
    if (
        not cfg.causal
        and cfg.pos == "learned"
        and cfg.norm == "layernorm"
        and not cfg.prenorm
        and cfg.mlp in ("gelu", "gelu_tanh")
        and cfg.bias
        and mha
        and cfg.embed_norm
        and not cfg.final_norm
        and not cfg.embed_scale
    ):
        return "bert"
    raise NoHFEquivalent(
        f"this config (pos={cfg.pos}, norm={cfg.norm}, mlp={cfg.mlp}, prenorm={cfg.prenorm}, "
        f"causal={cfg.causal}) matches no transformers architecture (llama, gpt2, bert)"
    )


def _ids(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    fam = hf_family(cfg)
    if fam == "llama":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            **_ids(cfg),
        }
    if fam == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new",
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            **_ids(cfg),
        }
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": "gelu" if cfg.mlp == "gelu" else "gelu_new",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "torch_dtype": "float32",
        "pad_token_id": cfg.pad_token_id or 0,
    }


def from_hf_config(hc: dict[str, Any], where: str = "config.json") -> ModelConfig:
    mt = hc.get("model_type")
    try:
        if mt in ("llama", "mistral", "qwen2"):
            d = hc["hidden_size"]
            n_head = hc["num_attention_heads"]
            return ModelConfig(
                vocab_size=hc["vocab_size"],
                d_model=d,
                n_layer=hc["num_hidden_layers"],
                n_head=n_head,
                n_kv_head=hc.get("num_key_value_heads", n_head),
                head_dim=hc.get("head_dim") or d // n_head,
                d_ff=hc["intermediate_size"],
                max_seq_len=hc.get("max_position_embeddings", 2048),
                pos="rope",
                rope_theta=float(hc.get("rope_theta", 10000.0)),
                norm="rmsnorm",
                norm_eps=hc.get("rms_norm_eps", 1e-6),
                mlp="swiglu",
                bias=bool(hc.get("attention_bias", False)),
                tie_embeddings=bool(hc.get("tie_word_embeddings", False)),
                **{k: hc.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
            )
        if mt == "gpt2":
            d = hc["n_embd"]
            return ModelConfig(
                vocab_size=hc["vocab_size"],
                d_model=d,
                n_layer=hc["n_layer"],
                n_head=hc["n_head"],
                d_ff=hc.get("n_inner") or 4 * d,
                max_seq_len=hc["n_positions"],
                norm_eps=hc.get("layer_norm_epsilon", 1e-5),
                **{k: hc.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
            )
        if mt == "bert":
            return ModelConfig(
                vocab_size=hc["vocab_size"],
                d_model=hc["hidden_size"],
                n_layer=hc["num_hidden_layers"],
                n_head=hc["num_attention_heads"],
                d_ff=hc["intermediate_size"],
                max_seq_len=hc["max_position_embeddings"],
                prenorm=False,
                mlp="gelu" if hc.get("hidden_act", "gelu") == "gelu" else "gelu_tanh",
                causal=False,
                type_vocab_size=hc.get("type_vocab_size", 2),
                embed_norm=True,
                final_norm=False,
                lm_head=False,
                norm_eps=hc.get("layer_norm_eps", 1e-12),
                pad_token_id=hc.get("pad_token_id", 0),
            )
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r} for model_type {mt!r}") from e
    raise ValueError(f"{where}: unsupported model_type {mt!r}; supported: llama, gpt2, bert")


def _bert_names(i: int) -> dict[str, str]:
    """Our per-layer names -> BERT's, for layer i."""
    b = f"encoder.layer.{i}."
    o = f"model.layers.{i}."
    return {
        o + "self_attn.q_proj": b + "attention.self.query",
        o + "self_attn.k_proj": b + "attention.self.key",
        o + "self_attn.v_proj": b + "attention.self.value",
        o + "self_attn.o_proj": b + "attention.output.dense",
        o + "input_layernorm": b + "attention.output.LayerNorm",
        o + "mlp.up_proj": b + "intermediate.dense",
        o + "mlp.down_proj": b + "output.dense",
        o + "post_attention_layernorm": b + "output.LayerNorm",
    }


_GPT2_TOP = {  # our names -> GPT-2's, outside the blocks
    "model.embed_tokens.weight": "transformer.wte.weight",
    "model.embed_positions.weight": "transformer.wpe.weight",
    "model.norm.weight": "transformer.ln_f.weight",
    "model.norm.bias": "transformer.ln_f.bias",
}


def _gpt2_names(i: int) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """Layer i's prefixes (ours, GPT-2's), its norm tensors (ours -> GPT-2's, copied as they
    are) and its Conv1D modules (ours -> GPT-2's; weights stored transposed, as (in, out)).
    The fused q/k/v projection is left to the caller."""
    o, h = f"model.layers.{i}.", f"transformer.h.{i}."
    ln = (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"))
    norms = {o + f"{ours}.{leaf}": h + f"{theirs}.{leaf}"
             for leaf in ("weight", "bias") for ours, theirs in ln}
    conv = {o + ours: h + theirs for ours, theirs in (("self_attn.o_proj", "attn.c_proj"),
                                                     ("mlp.up_proj", "mlp.c_fc"),
                                                     ("mlp.down_proj", "mlp.c_proj"))}
    return o, h, norms, conv


_BERT_TOP = {
    "model.embed_tokens": "embeddings.word_embeddings",
    "model.embed_positions": "embeddings.position_embeddings",
    "model.embed_types": "embeddings.token_type_embeddings",
    "model.embed_norm": "embeddings.LayerNorm",
}


def _bert_map(cfg: ModelConfig) -> dict[str, str]:
    """Our module names -> BERT's, for the whole model."""
    names = dict(_BERT_TOP)
    for i in range(cfg.n_layer):
        names.update(_bert_names(i))
    return names


def to_hf_state(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fam = hf_family(cfg)
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    if fam == "llama":
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
        return sd
    if fam == "bert":
        names = _bert_map(cfg)
        out = {}
        for k, v in sd.items():
            mod, _, leaf = k.rpartition(".")
            if mod in names:
                out[f"{names[mod]}.{leaf}"] = v
        return out
    # gpt2
    out = {theirs: sd[ours] for ours, theirs in _GPT2_TOP.items()}
    for i in range(cfg.n_layer):
        o, h, norms, conv = _gpt2_names(i)
        out.update({theirs: sd[ours] for ours, theirs in norms.items()})
        qkv_w = torch.cat([sd[o + f"self_attn.{p}_proj.weight"] for p in "qkv"], 0)
        out[h + "attn.c_attn.weight"] = qkv_w.t().contiguous()  # Conv1D stores (in, out)
        out[h + "attn.c_attn.bias"] = torch.cat([sd[o + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        for ours, theirs in conv.items():
            out[theirs + ".weight"] = sd[ours + ".weight"].t().contiguous()
            out[theirs + ".bias"] = sd[ours + ".bias"]
    return out


def from_hf_state(cfg: ModelConfig, hsd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_hf_state`; also accepts `bert.`-prefixed and pooler-bearing BERTs."""
    fam = hf_family(cfg)
    if fam == "llama":
        sd = {k: v for k, v in hsd.items() if not k.endswith("rotary_emb.inv_freq")}
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
        return sd
    if fam == "bert":
        names = _bert_map(cfg)
        inv = {v: k for k, v in names.items()}
        out = {}
        for k, v in hsd.items():
            k = k.removeprefix("bert.")
            mod, _, leaf = k.rpartition(".")
            if leaf == "gamma":
                leaf = "weight"
            elif leaf == "beta":
                leaf = "bias"
            if mod in inv:
                out[f"{inv[mod]}.{leaf}"] = v
        return out
    d = cfg.d_model
    sd = {ours: hsd[theirs] for ours, theirs in _GPT2_TOP.items()}
    for i in range(cfg.n_layer):
        o, h, norms, conv = _gpt2_names(i)
        sd.update({ours: hsd[theirs] for ours, theirs in norms.items()})
        w = hsd[h + "attn.c_attn.weight"].t()
        b = hsd[h + "attn.c_attn.bias"]
        for j, p in enumerate("qkv"):
            sd[o + f"self_attn.{p}_proj.weight"] = w[j * d : (j + 1) * d].contiguous()
            sd[o + f"self_attn.{p}_proj.bias"] = b[j * d : (j + 1) * d]
        for ours, theirs in conv.items():
            sd[ours + ".weight"] = hsd[theirs + ".weight"].t().contiguous()
            sd[ours + ".bias"] = hsd[theirs + ".bias"]
    return sd


def save_hf(model: torch.nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) atomically into out_dir."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    hc = to_hf_config(cfg)
    state = to_hf_state(cfg, model.state_dict())
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(hc, indent=2) + "\n")
        save_safetensors(state, tmp / "model.safetensors")
        gen = {k: v for k, v in _ids(cfg).items() if v is not None}
        if gen and hf_family(cfg) != "bert":
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_hf(tmp)
    return Path(out_dir)


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    cfg_file = path / "config.json"
    try:
        hc = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
    cfg = from_hf_config(hc, str(cfg_file))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights next to config.json")
    hsd: dict[str, torch.Tensor] = {}
    for f in files:
        hsd.update(load_safetensors(f))
    try:
        return cfg, from_hf_state(cfg, hsd)
    except KeyError as e:
        raise ValueError(
            f"{path}: weights lack tensor {e.args[0]!r} for {hc.get('model_type')}"
        ) from e
