"""Properties the maths guarantees: caching, causality, relative positions, GQA, explain."""

from __future__ import annotations

import torch

from llmlab.generate.engine import iter_decode
from llmlab.generate.sampling import SamplingParams
from llmlab.model import KVCache, ModelConfig, Transformer
from llmlab.model.positions import apply_rope, rope_cos_sin
from llmlab.model.record import record_attention

V = 256
LLAMA = dict(
    vocab_size=V,
    d_model=64,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    d_ff=128,
    max_seq_len=128,
    pos="rope",
    norm="rmsnorm",
    mlp="swiglu",
    bias=False,
)
GPT2 = dict(vocab_size=V, d_model=64, n_layer=2, n_head=4, max_seq_len=128)


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**kw)).eval()


def test_kv_cache_decoding_equals_full_recompute():
    for kw in (LLAMA, GPT2):
        m = _model(**kw)
        ids = torch.randint(0, V, (2, 24))
        with torch.no_grad():
            full = m(ids).logits
            cache = KVCache(m.cfg, 2, 24)
            parts = [m(ids[:, :10], cache=cache).logits]
            for t in range(10, 24):
                parts.append(m(ids[:, t : t + 1], cache=cache).logits)
        assert (torch.cat(parts, 1) - full).abs().max().item() <= 1e-5
        assert cache.length == 24


def test_future_tokens_do_not_change_past_logits():
    m = _model(**LLAMA)
    a = torch.randint(0, V, (1, 20))
    b = a.clone()
    b[0, 12:] = torch.randint(0, V, (8,))
    with torch.no_grad():
        la, lb = m(a).logits, m(b).logits
    assert torch.allclose(la[:, :12], lb[:, :12], atol=1e-6)
    assert not torch.allclose(la[:, 12:], lb[:, 12:], atol=1e-3)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    hd = 32
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), hd, 10000.0, torch.float64)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), hd, 10000.0, torch.float64)
        rq, rk = apply_rope(q.double(), cq, sq), apply_rope(k.double(), ck, sk)
        return (rq * rk).sum().item()

    for delta in (0, 1, 5, 37):
        ref = score(delta, 0)
        for shift in (3, 100, 1000):
            assert abs(score(shift + delta, shift) - ref) < 1e-9
    assert abs(score(5, 0) - score(9, 0)) > 1e-4  # and it does depend on the offset


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = _model(**LLAMA)
    mha = Transformer(ModelConfig(**{**LLAMA, "n_kv_head": 4})).eval()
    sd = gqa.state_dict()
    hd, rep = 16, 2
    for i in range(2):
        for p in ("k_proj", "v_proj"):
            w = sd[f"model.layers.{i}.self_attn.{p}.weight"]  # (2 * hd, d)
            sd[f"model.layers.{i}.self_attn.{p}.weight"] = (
                w.view(2, hd, -1).repeat_interleave(rep, 0).reshape(4 * hd, -1)
            )
    mha.load_state_dict(sd)
    ids = torch.randint(0, V, (2, 15))
    with torch.no_grad():
        assert (gqa(ids).logits - mha(ids).logits).abs().max().item() <= 1e-5


def test_explain_mode_returns_the_attention_sdpa_computed():
    m = _model(**LLAMA)
    ids = torch.randint(0, V, (1, 9))
    with torch.no_grad():
        plain = m(ids)
        with record_attention(m) as rec:
            ex = m(ids)
    assert (plain.logits - ex.logits).abs().max().item() <= 1e-5
    assert len(rec.attentions) == 2
    w, s = rec.attentions[0]["weights"], rec.attentions[0]["scores"]
    assert w.shape == (1, 4, 9, 9)
    assert torch.allclose(w.sum(-1), torch.ones(1, 4, 9), atol=1e-5)
    assert torch.all(w.triu(1) == 0)  # causal: nothing attends to the future
    assert torch.allclose(s.softmax(-1), w, atol=1e-6)


def test_explain_bidirectional_mode_sees_both_ways():
    m = _model(**{**LLAMA, "causal": False, "lm_head": False})
    with torch.no_grad(), record_attention(m) as rec:
        m(torch.randint(0, V, (1, 6)))
    assert rec.attentions[0]["weights"].triu(1).abs().sum() > 0


def test_batched_left_padded_generation_equals_one_by_one():
    m = _model(**LLAMA)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [42], [1, 2, 3]]
    params = SamplingParams(max_new_tokens=12, temperature=0)

    def run(ps):
        toks = [[] for _ in ps]
        for st in iter_decode(m, ps, params):
            for i in range(len(ps)):
                toks[i].append(int(st.tokens[i]))
        return toks

    batched = run(prompts)
    for i, p in enumerate(prompts):
        assert run([p])[0] == batched[i]


def test_batched_logits_equal_unpadded_logits():
    m = _model(**GPT2)  # learned positions must also count from each row's first real token
    prompts = [[5, 6, 7, 8, 9], [42, 43]]
    params = SamplingParams(max_new_tokens=4, temperature=0)
    b = [st.logits for st in iter_decode(m, prompts, params, return_logits=True)]
    for i, p in enumerate(prompts):
        one = [st.logits for st in iter_decode(m, [p], params, return_logits=True)]
        for s in range(4):
            assert (b[s][i] - one[s][0]).abs().max().item() <= 1e-4


def test_seeded_sampling_is_reproducible():
    m = _model(**LLAMA)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, seed=1234)

    def run():
        return [int(st.tokens[0]) for st in iter_decode(m, [[1, 2, 3]], params)]

    assert run() == run()


def test_chat_session_drops_oldest_turns_to_fit_the_context():
    from llmlab.generate.chat import ChatSession

    class Tok:  # one token per character, enough to count lengths
        eos_id = None

        def encode(self, text, allowed_special="none"):
            return [ord(c) % V for c in text]

    class LM:
        cfg = ModelConfig(**{**LLAMA, "max_seq_len": 300})
        tokenizer = Tok()

    s = ChatSession(LM(), max_new_tokens=50)
    s.history = [
        {"role": "user", "content": "a" * 60},
        {"role": "assistant", "content": "b" * 60},
    ] * 2
    s.history.append({"role": "user", "content": "latest"})
    s._fit_history()
    assert s.history[-1]["content"] == "latest"
    assert len(s.history) in (1, 3)


def test_static_cache_decoder_equals_dynamic_engine():
    from llmlab.generate.fast.static import StaticDecoder

    m = _model(**LLAMA)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [42], [1, 2, 3]]
    params = SamplingParams(max_new_tokens=10, temperature=0)
    dyn = [st.tokens.tolist() for st in iter_decode(m, prompts, params)]
    dec = StaticDecoder(m, batch_size=3, max_len=32)
    stat = [st.tokens.tolist() for st in dec.generate(prompts, params)]
    assert stat == dyn
    # The same decoder is reusable: a second batch starts from a clean mask.
    again = [st.tokens.tolist() for st in dec.generate(prompts, params)]
    assert again == dyn


def test_fused_projections_give_the_same_logits_and_tokens():
    import copy

    from llmlab.model.quant import fuse_projections_

    m = _model(**LLAMA)
    fused = fuse_projections_(copy.deepcopy(m))
    assert not any(hasattr(mod, "q_proj") for mod in fused.modules())
    assert sum(hasattr(mod, "qkv_fused") for mod in fused.modules()) == m.cfg.n_layer
    x = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        torch.testing.assert_close(fused(x).logits, m(x).logits, rtol=1e-5, atol=1e-5)
    prompts = [[5, 6, 7], [42, 1]]
    params = SamplingParams(max_new_tokens=6, temperature=0)
    ref = [st.tokens.tolist() for st in iter_decode(m, prompts, params)]
    assert [st.tokens.tolist() for st in iter_decode(fused, prompts, params)] == ref


def test_static_decoder_under_autocast_matches_dynamic_engine():
    """An RL rollout decodes inside the training step's autocast: the static decoder stores
    keys/values in the autocast dtype and gives the dynamic engine's greedy tokens."""
    from llmlab.generate.fast.static import StaticDecoder

    m = _model(**LLAMA)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [42], [1, 2, 3]]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dyn = [st.tokens.tolist() for st in iter_decode(m, prompts, params)]
        dec = StaticDecoder(m, batch_size=3, max_len=32)
        stat = [st.tokens.tolist() for st in dec.generate(prompts, params)]
    assert dec.cache.k[0].dtype == torch.bfloat16
    assert stat == dyn
