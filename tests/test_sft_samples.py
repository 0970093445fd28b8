"""SFT's held-out answers (samples.jsonl, the LoRA page's before/after columns) and its
accounting (run.json), against transformers + PEFT: the step-0 answers are the base model's
greedy replies, the last ones the trained adapter's; the trainable count is PEFT's."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers

from llmlab.model import ModelConfig, Transformer
from llmlab.train.config import SFTConfig, TrainConfig

NEW = 8  # answer tokens


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step LoRA run of a tiny random Llama (SmolLM2's tokenizer, ChatML) on 40 chat
    examples, evaluating (and answering 3 held-out prompts) at steps 0, 1 and 2."""
    from llmlab.tokenizer.loaders import load_tokenizer
    from llmlab.train.sft import run_sft
    from llmlab.weights.registry import save_checkpoint

    d = tmp_path_factory.mktemp("sft_samples")
    cfg = ModelConfig(vocab_size=49152, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64,
                      max_seq_len=128, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                      tie_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(1)  # a seed whose untrained replies are words, not blank lines
    save_checkpoint(Transformer(cfg), d / "model", load_tokenizer("smollm2"))
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": str(a + b)}]}
            for a in range(8) for b in range(5)]
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scfg = SFTConfig(model=str(d / "model"), data=str(d / "chat.jsonl"), peft="lora", lora_r=4,
                     lora_alpha=8, target_modules="q_proj,v_proj", val_examples=8,
                     sample_prompts=3)
    tcfg = TrainConfig(max_steps=2, batch_size=2, seq_len=64, lr=5e-2, warmup_steps=0,
                       weight_decay=0.0, eval_every=1, eval_batches=1, ckpt_every=0,
                       sample_tokens=NEW, threads=1, progress=False, tensorboard=False)
    run_sft(scfg, tcfg, d / "run")
    return d / "model", d / "run"


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "samples.jsonl").read_text().splitlines()]


def _hf_greedy(model: torch.nn.Module, lm, prompt: str) -> str:  # noqa: ANN001
    """transformers' greedy reply to one user turn in the model's own template (SmolLM2's,
    with its default system prompt), decoded by our tokenizer up to EOS."""
    from llmlab.generate.chat import chat_ids

    tok = lm.tokenizer
    ids = chat_ids(lm, [{"role": "user", "content": prompt}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                             eos_token_id=2, pad_token_id=2)[0, len(ids):].tolist()
    return tok.decode(out[: out.index(2)] if 2 in out else out).strip()


def test_samples_hold_each_steps_answers_with_prompt_and_reference(run) -> None:
    rows = _samples(run[1])
    assert [r["step"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(set(r) == {"step", "prompt", "answer", "reference"} for r in rows)
    prompts = [r["prompt"] for r in rows]
    assert prompts[:3] == prompts[3:6] == prompts[6:]  # the same held-out prompts each time
    # Held out: the last 8 rows of the file (val_examples), never trained on.
    held = {f"What is {a} plus {b}?" for a in range(8) for b in range(5)}
    assert set(prompts) <= held and len(set(prompts)) == 3
    train = [json.loads(ln)["messages"][0]["content"]
             for ln in (run[1].parent / "chat.jsonl").read_text().splitlines()][:-8]
    assert not set(prompts) & set(train)
    for r in rows:
        a, b = (int(t) for t in r["prompt"][8:-1].split(" plus "))
        assert r["reference"] == str(a + b)


def test_answers_are_transformers_peft_greedy_replies_before_and_after(run) -> None:
    """Step 0: the base model's reply (LoRA's B starts at 0); step 2: the final adapter's."""
    import llmlab
    from llmlab.weights.hf import save_hf

    model_dir, run_dir = run
    lm = llmlab.load(str(model_dir))
    hf_dir = save_hf(lm.model, run_dir.parent / "hf")
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    rows = _samples(run_dir)
    before = [_hf_greedy(base, lm, r["prompt"]) for r in rows[:3]]
    assert [r["answer"] for r in rows[:3]] == before
    tuned = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32),
        run_dir / "final").eval()
    after = [_hf_greedy(tuned, lm, r["prompt"]) for r in rows[6:]]
    assert [r["answer"] for r in rows[6:]] == after
    # ... and what llmlab's own generation gives with the adapter merged (as Chat loads it).
    merged = llmlab.lm.load_lm(str(model_dir), adapter=str(run_dir / "final"))
    ours = merged.generate([r["prompt"] for r in rows[6:]], chat=True, max_new_tokens=NEW,
                           temperature=0.0)
    assert [o.strip() for o in ours] == after
    assert all(before) and after != before  # the test can tell the two columns apart


def test_run_json_counts_are_peft_s(run) -> None:
    import llmlab
    from llmlab.weights.hf import save_hf

    model_dir, run_dir = run
    info = json.loads((run_dir / "run.json").read_text())
    hf_dir = save_hf(llmlab.load(str(model_dir)).model, run_dir.parent / "hf2")
    ref = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable, total = ref.get_nb_trainable_parameters()
    assert (info["trainable"], info["total_params"]) == (trainable, total)
    assert info["trainable_pct"] == pytest.approx(100 * trainable / total)
    mem = info["memory"]
    # fp32 AdamW: weight, gradient and two moments per trained parameter; frozen fp32.
    assert mem["trained_weights"] == mem["gradients"] == 4 * trainable
    assert mem["adam_moments"] == 8 * trainable
    assert mem["frozen_weights"] == 4 * (total - trainable)
    assert mem["full_finetune"] == 16 * total
    assert mem["total"] == 4 * (total - trainable) + 16 * trainable
