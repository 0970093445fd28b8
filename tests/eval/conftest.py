"""Small real models for CLI-level eval tests: a tiny random Llama with its own BPE tokenizer
(trained on Python docs text), saved as an HF directory, and a LoRA adapter for it made by the
`peft` library itself (non-zero B, so the adapter changes the model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import docs_text


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmlab.model import ModelConfig, Transformer
    from llmlab.tokenizer import train_bpe
    from llmlab.weights.hf import save_hf

    tok = train_bpe([docs_text("classes"), docs_text("errors")], vocab_size=384,
                    pattern="gpt2", progress=False,
                    special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    cfg = ModelConfig(vocab_size=384, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                      max_seq_len=256, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=128,
                      bias=False)
    torch.manual_seed(0)
    return save_hf(Transformer(cfg).eval(), tmp_path_factory.mktemp("tiny") / "model", tok)


@pytest.fixture(scope="session")
def peft_adapter(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import peft
    import transformers

    torch.manual_seed(1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                          init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft.get_peft_model(hf, cfg).save_pretrained(out)
    return out
