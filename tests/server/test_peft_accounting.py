"""llmlab.peft.accounting against the real `peft` package on meta-device Llama models."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers

from llmlab.peft import accounting as acc


def _meta_llama(s: acc.LlamaShape):  # noqa: ANN202
    cfg = transformers.LlamaConfig(
        hidden_size=s.hidden,
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_kv_heads,
        head_dim=s.head_dim,
        intermediate_size=s.intermediate,
        vocab_size=s.vocab,
        tie_word_embeddings=s.tie_embeddings,
    )
    with torch.device("meta"):  # shapes only: 8B parameters, no memory
        return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("shape", [acc.LLAMA_31_8B, acc.LLAMA_2_13B], ids=["llama31-8b", "l2-13b"])
def test_lora_q_v_r8_matches_peft(shape: acc.LlamaShape) -> None:
    model = _meta_llama(shape)
    assert shape.total_params() == sum(p.numel() for p in model.parameters())
    pm = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    trainable, total = pm.get_nb_trainable_parameters()
    assert acc.lora_params(shape, 8, ["q_proj", "v_proj"]) == trainable
    assert shape.total_params() + trainable == total


def test_llama2_13b_is_the_famous_6_553_600() -> None:
    # PEFT's README/blog print for Llama-2-13B, r=8 on q_proj and v_proj.
    assert acc.lora_params(acc.LLAMA_2_13B, 8, ["q_proj", "v_proj"]) == 6_553_600


def test_dora_prompt_prefix_match_peft() -> None:
    s = acc.LLAMA_31_8B
    cases = [
        (
            peft.LoraConfig(r=4, target_modules=["k_proj", "down_proj"], use_dora=True),
            acc.lora_params(s, 4, ["k_proj", "down_proj"], dora=True),
        ),
        (
            peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
            acc.prompt_tuning_params(s, 20),
        ),
        (
            peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
            acc.prefix_tuning_params(s, 20),
        ),
    ]
    for cfg, ours in cases:
        trainable, _ = peft.get_peft_model(_meta_llama(s), cfg).get_nb_trainable_parameters()
        assert ours == trainable, type(cfg).__name__


def test_bad_target_and_rank() -> None:
    with pytest.raises(ValueError, match="target_modules"):
        acc.lora_params(acc.LLAMA_31_8B, 8, ["qq_proj"])
    with pytest.raises(ValueError, match="r must"):
        acc.lora_params(acc.LLAMA_31_8B, 0, ["q_proj"])
