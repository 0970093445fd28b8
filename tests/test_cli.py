"""The CLI end to end, including every bad input the core issue names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from inproc import llmlab

from llmlab.model import ModelConfig, Transformer
from llmlab.weights.registry import _smollm2_file, save_checkpoint


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return llmlab(*args, stdin=stdin)


def test_models_lists_the_bundled_models():
    r = run("models")
    assert r.returncode == 0
    assert "smollm2-135m-instruct" in r.stdout and "minilm-l6-v2" in r.stdout


def test_unknown_model_lists_known_ones():
    r = run("generate", "--model", "gpt-17", "--prompt", "hi")
    assert r.returncode != 0
    assert "gpt-17" in r.stderr
    assert "smollm2-135m-instruct" in r.stderr and "minilm-l6-v2" in r.stderr


@pytest.mark.parametrize(
    "flag,value,name",
    [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "1.5", "top_p"),
        ("--top-p", "0", "top_p"),
        ("--top-k", "-3", "top_k"),
    ],
)
def test_out_of_range_sampling_parameter_is_named(flag, value, name):
    r = run("generate", "--prompt", "hi", flag, value)
    assert r.returncode != 0 and name in r.stderr


@pytest.mark.parametrize("keep", [0.0005, 0.6])
def test_truncated_gguf_names_the_file(tmp_path, keep):
    src = _smollm2_file()
    bad = tmp_path / "broken.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(int(src.stat().st_size * keep)))
    r = run("generate", "--model", str(bad), "--prompt", "hi")
    assert r.returncode != 0
    assert str(bad) in r.stderr and "Traceback" not in r.stderr


def test_corrupt_safetensors_names_the_file(tmp_path):
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, max_seq_len=32)
    save_checkpoint(Transformer(cfg), tmp_path / "ck")
    st = tmp_path / "ck" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    r = run("export-hf", str(tmp_path / "ck"), str(tmp_path / "out"))
    assert r.returncode != 0
    assert str(st) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_prompt_longer_than_context_is_an_error():
    r = run("generate", "--prompt", "word " * 9000, "--max-new-tokens", "8")
    assert r.returncode != 0
    assert "context" in r.stderr and "--truncate" in r.stderr


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
def test_generate_greedy_prints_only_the_completion(dtype):
    r = run(
        "generate",
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
        "--dtype",
        dtype,
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "<|im" not in r.stdout and "capital of France?" not in r.stdout.split("Paris")[0][-5:]


def test_chat_streams_and_handles_commands():
    script = (
        "What is the capital of France?\n/reset\n/system Always answer in one word.\n"
        "/bogus\n/exit\n"
    )
    r = run("chat", "--temperature", "0", "--max-new-tokens", "24", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "history cleared" in r.stderr and "system prompt set" in r.stderr
    assert "unknown command /bogus" in r.stderr


def test_export_hf_cli_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, max_seq_len=32)
    m = Transformer(cfg).eval()
    save_checkpoint(m, tmp_path / "ck")
    r = run("export-hf", str(tmp_path / "ck"), str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    ref = AutoModelForCausalLM.from_pretrained(Path(tmp_path / "hf")).eval()
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert (ref(ids).logits - m(ids).logits).abs().max().item() <= 1e-4


def test_output_path_that_is_not_ours_is_refused_not_replaced(tmp_path):
    """Outputs are swapped in atomically, replacing an earlier output; a file or a directory
    of something else in the way is an error, and is left as it was."""
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, max_seq_len=32)
    save_checkpoint(Transformer(cfg).eval(), tmp_path / "ck")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for out, what in (("notes", "is not an llmlab output (it holds todo.txt"),
                      ("file", "is not a directory")):
        r = run("export-hf", str(tmp_path / "ck"), str(tmp_path / out))
        assert r.returncode != 0 and f"{out}: exists and {what}" in r.stderr, r.stderr
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me too"
    for _ in range(2):  # an earlier export (or an empty dir) is replaced
        r = run("export-hf", str(tmp_path / "ck"), str(tmp_path / "hf"))
        assert r.returncode == 0 and (tmp_path / "hf" / "config.json").exists(), r.stderr


def test_fast_flag_sets_a_speed_switch_and_names_the_fields_when_wrong():
    from llmlab.settings import speed, speed_override

    with speed_override(lean_decode=True):  # restores every field after the in-process runs
        r = run("--fast", "lean_decode=0", "models")
        assert r.returncode == 0, r.stderr
        assert speed.lean_decode is False
        r = run("--fast", "bogus=1", "models")
        assert r.returncode == 2
        assert r.stderr.startswith("error: --fast 'bogus=1'"), r.stderr
        assert "lean_decode" in r.stderr and "triton_tiles" in r.stderr and "lora_fast" in r.stderr
    assert "--fast NAME=VALUE" in run("--help").stdout
