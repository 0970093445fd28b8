"""A run trained from the playground is a model every page can use: checked against outside
references (HF tokenizers on its tokenizer.json, transformers on its HF export, transformers +
PEFT on its adapter), through the same endpoints the pages call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from .lab_helpers import finish

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def micro(server: Any) -> dict[str, Any]:
    return finish(server.url, "pretrain", {"preset": "micro", "max_steps": 20, "eval_every": 10,
                                         "ckpt_every": 10, "log_every": 5})


def test_a_pretraining_run_is_a_model_with_its_checkpoints(server: Any, micro: dict) -> None:
    models = httpx.get(f"{server.url}/api/models", timeout=60).json()["attention"]
    entry = next(m for m in models if m["id"] == f"run:{micro['id']}")
    assert entry["checkpoints"] == [10, 20] and entry["kind"] == "pretrain"


def test_tokenizer_page_uses_the_runs_own_tokenizer(server: Any, micro: dict) -> None:
    from tokenizers import Tokenizer

    text = "And it came to pass, that the LORD spake unto Moses."
    got = httpx.post(f"{server.url}/api/tokenize", json={"text": text,
                     "tokenizer": micro["model"]}, timeout=60).json()
    root = Path(server.hub.runs().run_dir(micro["id"]))
    ref = Tokenizer.from_file(str(root / "final" / "tokenizer.json")).encode(text).ids
    assert got["ids"] == ref


@pytest.mark.parametrize("at", ["", "@10"])
def test_decoding_page_on_a_run_equals_transformers(server: Any, micro: dict, at: str,
                                                     tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    import llmlab
    from llmlab.weights.hf import save_hf

    text = "And it came to pass"
    got = httpx.post(f"{server.url}/api/decode/next", json={"text": text, "k": 5,
                     "model": micro["model"] + at}, timeout=60).json()
    root = Path(server.hub.runs().run_dir(micro["id"]))
    src = root / "final" if not at else root / "checkpoints" / "step_0000010" / "model"
    lm = llmlab.load(str(src))
    save_hf(lm.model, tmp_path / "hf", lm.tokenizer)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = lm.tokenizer.encode(text)
    with torch.no_grad():
        p = ref(torch.tensor([ids])).logits[0, -1].softmax(-1)
    top = p.topk(5)
    assert [t["id"] for t in got["top"]] == top.indices.tolist()
    assert [t["raw_p"] for t in got["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_chat_with_a_lora_run_equals_transformers_and_peft(server: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmlab.generate.chat import template_for
    from llmlab.weights.registry import _smollm2_file

    run = finish(server.url, "sft", {"data": "trivia", "peft": "lora", "lora_r": 4,
                                   "lora_alpha": 8, "max_steps": 2, "batch_size": 2,
                                   "lr": 5e-3, "eval_every": 0, "ckpt_every": 0})
    assert run["adapter"] and run["model"] == f"run:{run['id']}"
    listed = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    assert run["model"] in [m["id"] for m in listed]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={
        "model": run["model"], "messages": msgs, "temperature": 0, "max_tokens": 12},
        timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == run["model"]
    p = _smollm2_file()
    base = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                                dtype=torch.float32)
    root = Path(server.hub.runs().run_dir(run["id"]))
    ref = PeftModel.from_pretrained(base, str(root / "final")).merge_and_unload().eval()
    lm = server.hub.attention_model(run["model"])
    prompt = template_for(lm).encode(lm.tokenizer, msgs)  # tested against HF's elsewhere
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                           eos_token_id=2)[0, len(prompt):].tolist()
    want = lm.tokenizer.decode([t for t in out if t != 2])
    assert body["choices"][0]["message"]["content"] == want.strip() or \
        body["choices"][0]["message"]["content"] == want


def test_unknown_run_models_are_clear_errors(server: Any) -> None:
    r = httpx.post(f"{server.url}/api/decode/next", json={"text": "x", "model": "run:nope"},
                   timeout=30)
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={
        "model": "run:nope", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_inside_page_on_a_run(server: Any, micro: dict) -> None:
    """The logit lens's last row on a run is the run's own prediction; its heads get maps."""
    import llmlab

    text = "And it came to pass"
    url = f"{server.url}/api/inside"
    lens = httpx.post(f"{url}/lens", json={"text": text, "model": micro["model"], "top_k": 3},
                      timeout=120)
    assert lens.status_code == 200, lens.text
    lm = llmlab.load(str(Path(server.hub.runs().run_dir(micro["id"])) / "final"))
    with torch.no_grad():
        p = lm.model(torch.tensor([lm.tokenizer.encode(text)])).logits[0].softmax(-1)
    assert lens.json()["top_ids"][-1] == p.topk(3, dim=-1).indices.tolist()
    heads = httpx.post(f"{url}/heads", json={"model": micro["model"] + "@10", "n": 8},
                       timeout=120).json()
    cfg = lm.cfg
    assert len(heads["scores"]["induction"]) == cfg.n_layer
    assert len(heads["copying"][0]) == cfg.n_head


def test_kvcache_page_on_a_run(server: Any, micro: dict) -> None:
    """The KV-cache page on a run: its memory line is what KVCache allocates for the run's
    config, its traced tokens are the run's own greedy ones by full recompute, and its
    quantised copies compare against its fp32 weights."""
    import llmlab
    from llmlab.explain.kvcache import allocated_bytes
    from llmlab.model.cache import KVCache

    text, n = "And it came to pass", 4
    url = f"{server.url}/api/kvcache"
    body = {"text": text, "model": micro["model"], "n_new": n}
    lm = llmlab.load(str(Path(server.hub.runs().run_dir(micro["id"])) / "final"))
    mem = httpx.post(f"{url}/memory", json=body, timeout=60).json()
    assert mem["series"][0]["bytes"][0] == allocated_bytes(
        KVCache(lm.cfg, 1, mem["contexts"][0], dtype=lm.model.dtype))
    tr = httpx.post(f"{url}/trace", json=body, timeout=120)
    assert tr.status_code == 200, tr.text
    seq = lm.tokenizer.encode(text)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(lm.model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert tr.json()["tokens"] == seq[-n:]
    q = httpx.post(f"{url}/quant", json=body, timeout=300).json()
    assert len(q["layers"]) == lm.cfg.n_layer + 1 and max(q["rel_error"]["fp32"]) == 0
