"""`llmlab sft` end to end on a tiny model: run dir contents, PEFT loads the adapter, resume
after a kill continues the same loss curve, bad data rows exit with file:line: field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import peft
import pytest
import torch
import transformers
from inproc import llmlab
from train_common import env

from llmlab.model import ModelConfig, Transformer

IDS = torch.tensor([[1, 28, 4090, 7, 215, 12, 9, 33]])
COMMON = ["--format", "chat", "--seq-len", "64", "--batch-size", "2", "--threads", "1",
          "--no-progress", "--no-tensorboard", "--log-every", "1", "--eval-every", "0",
          "--warmup-steps", "2", "--val-examples", "4", "--sample-tokens", "0"]


def sft(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if "--compile" in args:  # dynamo's caches would outlive the run in this process
        r = subprocess.run([sys.executable, "-m", "llmlab.cli", "sft", *args], env=env(),
                           capture_output=True, text=True, timeout=300)
    else:
        r = llmlab("sft", *args)
    if check and r.returncode:
        raise AssertionError(r.stderr[-3000:])
    return r


def losses(run: Path) -> list[tuple]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama with SmolLM2's tokenizer (ChatML), and 40 chat examples."""
    from llmlab.tokenizer.loaders import load_tokenizer
    from llmlab.weights.registry import save_checkpoint

    d = tmp_path_factory.mktemp("sft")
    tok = load_tokenizer("smollm2")
    cfg = ModelConfig(vocab_size=49152, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64,
                      max_seq_len=128, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                      tie_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    save_checkpoint(Transformer(cfg), d / "model", tok)
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": str(a + b)}]}
            for a in range(8) for b in range(5)]
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "model", d / "chat.jsonl"


def test_lora_run_dir_and_peft_loads_the_adapter(setup, tmp_path):
    import llmlab
    from llmlab.peft.model import load_adapter
    from llmlab.weights.hf import save_hf

    model, data = setup
    run = tmp_path / "run"
    r = sft("--model", str(model), "--data", str(data), "--peft", "lora", "--lora-r", "4",
            "--target-modules", "all-linear", "--max-steps", "5", "--lr", "1e-2",
            "--out", str(run), *COMMON)
    assert "trainable params:" in r.stdout
    steps = losses(run)
    assert [s[0] for s in steps] == [1, 2, 3, 4, 5] and all(s[3] > 0 for s in steps)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sft"]["peft"] == "lora" and cfg["sft"]["lora_r"] == 4
    assert cfg["train"]["max_steps"] == 5 and cfg["model"]["d_model"] == 32
    final = run / "final"
    assert (final / "adapter_config.json").exists()
    assert (final / "adapter_model.safetensors").exists()
    lm = llmlab.load(str(model))
    hf_dir = save_hf(lm.model, tmp_path / "hf")
    ours = load_adapter(lm.model, final).eval()
    ref = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(hf_dir), final).eval()
    with torch.no_grad():
        a, b = ours(IDS).logits, ref(input_ids=IDS).logits
        base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)(input_ids=IDS).logits
    assert (a - b).abs().max().item() <= 1e-4
    assert (b - base).abs().max().item() > 1e-3  # training moved the adapter off B = 0


def test_resume_after_kill_continues_the_same_loss_curve(setup, tmp_path):
    model, data = setup
    args = ["--model", str(model), "--data", str(data), "--peft", "lora", "--lora-r", "4",
            "--max-steps", "30", "--ckpt-every", "5", "--lora-dropout", "0.1", *COMMON]
    sft("--out", str(tmp_path / "ref"), *args)
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "llmlab.cli", "sft", "--out", str(run), *args],
                         env=env(), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step_0000010").exists() and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert losses(run)[-1][0] < 30, "the run ended before it could be killed"
    sft("--out", str(run), *args, "--resume")
    assert losses(run) == losses(tmp_path / "ref")  # exact, every step (dropout included)


def test_regionally_compiled_lora_run_follows_the_eager_loss_curve(setup, tmp_path):
    """--compile --compile-scope regional: the Trainer compiles each block in place; the
    losses are the eager run's (torch eager is the reference) within fp32 rounding."""
    model, data = setup
    args = ["--model", str(model), "--data", str(data), "--peft", "lora", "--lora-r", "4",
            "--target-modules", "all-linear", "--max-steps", "4", "--lr", "1e-2", *COMMON]
    sft("--out", str(tmp_path / "eager"), *args)
    sft("--out", str(tmp_path / "regional"), *args, "--compile", "--compile-scope", "regional")
    want, got = losses(tmp_path / "eager"), losses(tmp_path / "regional")
    assert [g[0] for g in got] == [w[0] for w in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        assert g[1] == pytest.approx(w[1], rel=1e-4)
    cfg = json.loads((tmp_path / "regional" / "config.json").read_text())
    assert cfg["train"]["compile"] and cfg["train"]["compile_scope"] == "regional"


@pytest.mark.parametrize("rows, fmt, expect", [
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
      {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
     "chat", r"bad.jsonl:2: field messages\[1\].role: 'bot' is not one of"),
    ([{"instruction": "x", "output": "y"}, {"instruction": "x", "output": 5}],
     "alpaca", r"bad.jsonl:2: field 'output' must be a string, got a int"),
])
def test_bad_rows_exit_nonzero_naming_line_and_field(setup, tmp_path, rows, fmt, expect):
    import re

    model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = sft("--model", str(model), "--data", str(bad), "--max-steps", "1",
            "--out", str(tmp_path / "run"), *[a if a != "chat" else fmt for a in COMMON],
            check=False)
    assert r.returncode != 0 and re.search(expect, r.stderr), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_chat_template_flag_travels_with_the_adapter_into_merged_hf_exports(setup, tmp_path):
    """--chat-template llama3: the adapter dir carries it, `lora merge --hf` writes it where
    transformers' tokenizer applies it (rendering as ours), and the merged model chats in it;
    a bad template file is refused before any training."""
    import llmlab
    from llmlab.generate.chat import template_for
    from llmlab.tokenizer.chat_template import TEMPLATES

    model, data = setup
    run = tmp_path / "run"
    args = ["--model", str(model), "--data", str(data), "--peft", "lora", "--lora-r", "4",
            "--max-steps", "2", *COMMON]
    sft("--out", str(run), "--chat-template", "llama3", *args)
    t = TEMPLATES["llama3"]
    assert (run / "final" / "chat_template.jinja").read_text() == t.to_jinja()
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", "lora", "merge", "--model",
                        str(model), "--adapter", str(run / "final"), "--out",
                        str(tmp_path / "merged"), "--hf"], env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    msgs = [{"role": "user", "content": "What is 2 plus 3?"}]
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) \
        == t.render(msgs) and "<|start_header_id|>user<|end_header_id|>" in t.render(msgs)
    assert template_for(llmlab.load(str(tmp_path / "merged"))) == t
    (tmp_path / "bad.json").write_text(json.dumps({"turn_start": "<{who}>"}))
    r = sft("--out", str(tmp_path / "bad"), "--chat-template", str(tmp_path / "bad.json"),
            *args, check=False)
    assert r.returncode == 2 and "bad.json: field 'turn_start' must contain {role}" in r.stderr
    assert not (tmp_path / "bad").exists()
