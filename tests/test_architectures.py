"""Every architecture, on random weights, against an outside implementation of it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmlab.lm import load
from llmlab.model import ModelConfig, Transformer
from llmlab.model.config import PRESETS, preset
from llmlab.model.positions import sinusoidal_table
from llmlab.weights.hf import save_hf

V = 320


def _randomise_norms(m: nn.Module) -> None:
    # Fresh norms are all ones/zeros, which would hide a swapped or missing norm.
    g = torch.Generator().manual_seed(1)
    for n, p in m.named_parameters():
        if "norm" in n:
            p.data = (1 if n.endswith("weight") else 0) + 0.1 * torch.randn(p.shape, generator=g)


GPT2 = dict(vocab_size=V, d_model=64, n_layer=3, n_head=4, max_seq_len=64)
LLAMA = dict(
    vocab_size=V,
    d_model=64,
    n_layer=3,
    n_head=4,
    n_kv_head=2,
    d_ff=160,
    max_seq_len=64,
    pos="rope",
    rope_theta=10000.0,
    norm="rmsnorm",
    mlp="swiglu",
    bias=False,
    tie_embeddings=False,
)
BERT = dict(
    vocab_size=V,
    d_model=64,
    n_layer=2,
    n_head=4,
    max_seq_len=64,
    prenorm=False,
    mlp="gelu",
    causal=False,
    type_vocab_size=2,
    embed_norm=True,
    final_norm=False,
    lm_head=False,
    norm_eps=1e-12,
)


@pytest.mark.parametrize(
    "kind,kw", [("gpt2", GPT2), ("llama", LLAMA), ("llama-tied", {**LLAMA, "tie_embeddings": True})]
)
def test_decoder_logits_match_transformers(tmp_path, kind, kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = Transformer(ModelConfig(**kw)).eval()
    _randomise_norms(m)
    save_hf(m, tmp_path / "hf")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, V, (3, 17))
    with torch.no_grad():
        ours, theirs = m(ids).logits, ref(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # ...and the exported directory loads back into llmlab unchanged.
    back = load(tmp_path / "hf").model
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours)


def test_bert_matches_transformers(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    m = Transformer(ModelConfig(**BERT)).eval()
    _randomise_norms(m)
    save_hf(m, tmp_path / "hf")
    ref = AutoModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, V, (2, 13))
    types = torch.randint(0, 2, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        ours = m.encode(ids, mask, token_types=types)
        theirs = ref(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert (ours - theirs)[mask.bool()].abs().max().item() <= 1e-4


def _copy_mha(ours, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        w = torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        b = torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias])
        theirs.in_proj_weight.copy_(w)
        theirs.in_proj_bias.copy_(b)
        theirs.out_proj.weight.copy_(ours.o_proj.weight)
        theirs.out_proj.bias.copy_(ours.o_proj.bias)


def _copy_ff_norms(blk, layer, norms: list[str]) -> None:
    with torch.no_grad():
        layer.linear1.load_state_dict(blk.mlp.up_proj.state_dict())
        layer.linear2.load_state_dict(blk.mlp.down_proj.state_dict())
        for ours, theirs in zip(norms, ["norm1", "norm2", "norm3"], strict=False):
            getattr(layer, theirs).load_state_dict(getattr(blk, ours).state_dict())


def _copy_encoder(ours: nn.ModuleList, theirs: nn.ModuleList) -> None:
    """Our self-attention-only blocks into nn.TransformerEncoderLayer's."""
    for blk, lyr in zip(ours, theirs, strict=True):
        _copy_mha(blk.self_attn, lyr.self_attn)
        _copy_ff_norms(blk, lyr, ["input_layernorm", "post_attention_layernorm"])


# The 2017 architecture at toy size: post-norm Add & Norm, ReLU, sinusoidal positions,
# embeddings scaled by sqrt(d_model), no final norm (as torch.nn.Transformer* has none).
VASWANI = dict(vocab_size=V, d_model=64, n_layer=2, n_head=4, d_ff=128, max_seq_len=64,
               pos="sinusoidal", prenorm=False, mlp="relu", final_norm=False, embed_scale=True)


def _vaswani(**kw) -> Transformer:  # noqa: ANN003
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**VASWANI, **kw)).eval()
    _randomise_norms(m)
    return m


def test_post_norm_sinusoidal_decoder_matches_torch_transformer_encoder():
    """The 2017 decoder-only stack (post-norm Add & Norm, ReLU, sinusoidal positions)
    against torch.nn.TransformerEncoder run with a causal mask."""
    m = _vaswani()
    layer = nn.TransformerEncoderLayer(
        64, 4, 128, dropout=0.0, activation="relu", batch_first=True, norm_first=False
    )
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    _copy_encoder(m.model.layers, ref.layers)
    ids = torch.randint(0, V, (2, 20))
    x = m.model.embed_tokens(ids) * math.sqrt(64) + sinusoidal_table(64, 64)[:20]
    causal = nn.Transformer.generate_square_subsequent_mask(20)
    with torch.no_grad():
        theirs = ref(x, mask=causal, is_causal=True)
        ours = m(ids).hidden
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_encoder_decoder_matches_torch_transformer():
    m = _vaswani(encoder_layers=2)
    enc_layer = nn.TransformerEncoderLayer(64, 4, 128, 0.0, "relu", batch_first=True)
    dec_layer = nn.TransformerDecoderLayer(64, 4, 128, 0.0, "relu", batch_first=True)
    enc = nn.TransformerEncoder(enc_layer, 2, enable_nested_tensor=False).eval()
    dec = nn.TransformerDecoder(dec_layer, 2).eval()
    _copy_encoder(m.encoder.layers, enc.layers)
    for blk, lyr in zip(m.model.layers, dec.layers, strict=True):
        _copy_mha(blk.self_attn, lyr.self_attn)
        _copy_mha(blk.cross_attn, lyr.multihead_attn)
        _copy_ff_norms(
            blk, lyr, ["input_layernorm", "cross_attn_layernorm", "post_attention_layernorm"]
        )
    src, tgt = torch.randint(0, V, (2, 15)), torch.randint(0, V, (2, 9))
    pe = sinusoidal_table(64, 64)
    emb = m.model.embed_tokens
    with torch.no_grad():
        mem = enc(emb(src) * 8.0 + pe[:15])
        theirs = dec(
            emb(tgt) * 8.0 + pe[:9],
            mem,
            tgt_mask=nn.Transformer.generate_square_subsequent_mask(9),
            tgt_is_causal=True,
        )
        out = m(tgt, encoder_input_ids=src)
        theirs_logits = theirs @ emb.weight.t()
    assert (out.hidden - theirs).abs().max().item() <= 1e-4
    assert (out.logits - theirs_logits).abs().max().item() <= 1e-4


def test_sinusoidal_table_is_the_papers_formula():
    n, d = 50, 16
    table = sinusoidal_table(n, d)
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_encoder_decoder_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V,
        d_model=32,
        n_layer=2,
        encoder_layers=2,
        n_head=4,
        max_seq_len=64,
        pos="sinusoidal",
        prenorm=False,
        mlp="relu",
    )
    m = Transformer(cfg).eval()
    from llmlab.model import KVCache

    src, tgt = torch.randint(0, V, (1, 10)), torch.randint(0, V, (1, 8))
    with torch.no_grad():
        full = m(tgt, encoder_input_ids=src).logits
        cache = KVCache(cfg, 1, 16)
        steps = [m(tgt[:, :3], encoder_input_ids=src, cache=cache).logits]
        for t in range(3, 8):
            steps.append(m(tgt[:, t : t + 1], cache=cache).logits)
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("variant", [{}, {"bias": False, "tie_embeddings": False},
                                     {"encoder_layers": 2, "type_vocab_size": 2}])
def test_config_counts_the_parameters_the_model_has(name, variant):
    """`ModelConfig.num_params` is arithmetic on the shapes; the model built on the meta
    device (no memory) has exactly that many parameters, shared matrices counted once."""
    cfg = preset(name, **variant)
    with torch.device("meta"):
        built = sum(p.numel() for p in Transformer(cfg).parameters())
    assert cfg.num_params() == built
