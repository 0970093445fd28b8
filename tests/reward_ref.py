"""The outside reference for our reward models, shared by the CLI and server tests: a tiny
random Llama over SmolLM2's tokenizer, pairs it can learn, and transformers'
LlamaForSequenceClassification + PEFT reading an exported reward model."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_tiny(out: Path) -> Path:
    """A random 2-layer Llama over SmolLM2's 49k vocabulary, saved with its tokenizer."""
    from llmlab.model import ModelConfig, Transformer
    from llmlab.tokenizer import load_tokenizer
    from llmlab.weights.registry import save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=49152, d_model=32, n_layer=2, n_head=2, n_kv_head=1,
                      max_seq_len=256, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=64,
                      bias=False, tie_embeddings=True)
    return save_checkpoint(Transformer(cfg), out, load_tokenizer("smollm2"))


def make_prefs_file(out: Path) -> Path:
    """Pairs a tiny model can learn: chosen 'yes', rejected 'no'."""
    rows = [{"prompt": f"Is {a} + {b} = {a + b}?", "chosen": "yes", "rejected": "no"}
            for a, b in zip(range(1, 41), range(40, 0, -1), strict=True)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


class HFReward:
    """transformers + PEFT on our exported reward model (base checkpoint `tiny`, adapter and
    score head in `final`): LlamaForSequenceClassification scores the last token's final
    hidden state, as ours does; our head has a bias, which the HF head lacks, added here."""

    def __init__(self, tiny: Path, final: Path, tmp: Path) -> None:
        from peft import PeftModel
        from transformers import LlamaForCausalLM, LlamaForSequenceClassification

        import llmlab
        from llmlab.weights.hf import save_hf
        from llmlab.weights.io import load_safetensors

        save_hf(llmlab.load(str(tiny)).model, tmp / "hf")
        lm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp / "hf"),
                                       final).merge_and_unload()
        self.seq = LlamaForSequenceClassification(lm.config).eval()
        self.seq.model.load_state_dict(lm.model.state_dict())
        head = load_safetensors(final / "score_head.safetensors")
        with torch.no_grad():
            self.seq.score.weight.copy_(head["head.weight"])
        self.bias = head["head.bias"][0]

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """The reward of one unpadded row (1, T): no padding convention is involved."""
        return self.seq(ids).logits[0, 0] + self.bias
