"""The LoRA page's live run (#21): a 2-step LoRA fine-tune of SmolLM2 started from the page
gives an adapter that the model pickers offer as run:ID; the page's before/after answers are
transformers + PEFT's greedy replies of the base model and of the exported adapter, and its
trainable count is PEFT's."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import peft
import torch
import transformers

from .browser import shot


def _greedy(model: torch.nn.Module, lm, prompt: str, new: int) -> str:  # noqa: ANN001
    """transformers' greedy reply to one user turn in SmolLM2's template, up to <|im_end|>."""
    from llmlab.generate.chat import chat_ids

    ids = chat_ids(lm, [{"role": "user", "content": prompt}])
    eos = lm.tokenizer.eos_id
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)[0, len(ids):].tolist()
    return lm.tokenizer.decode(out[: out.index(eos)] if eos in out else out).strip()


def test_two_step_lora_run_from_the_page_gives_a_chat_model(page, server, lm, tmp_path) -> None:  # noqa: ANN001
    from llmlab.weights.hf import save_hf

    pg = page
    pg.goto(f"{server.url}/#/lora")
    pg.wait_for_selector("[data-testid=lora-live]")
    pg.fill("[data-testid=live-steps]", "2")
    pg.click("[data-testid=lora-run-start]")
    pg.wait_for_function(
        "document.querySelector('[data-testid=lora-run-status]').dataset.status === 'finished'",
        timeout=600_000)
    run = httpx.get(f"{server.url}/api/runs").json()["runs"][0]
    assert run["status"] == "finished" and run["adapter"] and run["final"], run
    assert run["options"]["max_steps"] == 2 and run["options"]["lora_r"] == 8
    # The adapter is a model every picker offers (Chat's, once the lead wires run models in).
    ids = [m["id"] for m in httpx.get(f"{server.url}/api/models").json()["attention"]]
    assert f"run:{run['id']}" in ids
    pg.wait_for_function("document.querySelector('[data-testid=live-done]').hidden === false")
    assert f"run:{run['id']}" in pg.inner_text("[data-testid=live-done]")
    pg.wait_for_selector("[data-testid=live-chart] path.fline.train")

    # Before and after columns: the run's held-out prompts (samples.jsonl, steps 0 and 2)...
    run_dir = Path(server.hub.runs().run_dir(run["id"]))
    samples = [json.loads(ln) for ln in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 0, 0, 2, 2, 2]
    prompts = [s["prompt"] for s in samples[:3]]
    cells = pg.eval_on_selector_all(
        "[data-testid=live-ba-row]",
        "rows => rows.map(r => ['before', 'after', 'reference'].map("
        "c => r.querySelector(`[data-col=${c}]`).textContent))")
    assert len(cells) == 3 and all(all(c) for c in cells)
    # ... answered by transformers greedily: the base model (before) and the adapter (after).
    hf_dir = save_hf(lm.model, tmp_path / "hf")
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    new = run["options"]["sample_tokens"]
    assert [c[0] for c in cells] == [_greedy(base, lm, p, new) for p in prompts]
    tuned = peft.PeftModel.from_pretrained(base, run_dir / "final").eval()
    assert [c[1] for c in cells] == [_greedy(tuned, lm, p, new) for p in prompts]
    assert [c[2] for c in cells] == [s["reference"] for s in samples[:3]]
    # The trainable count the page shows is PEFT's for the same LoRA config.
    ref = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32),
        peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    want = ref.get_nb_trainable_parameters()[0]
    assert pg.inner_text("[data-stat=live-trainable]") == f"{want:,}"
    shot(pg, "lora_live")

    # Chat selects the adapter, and its greedy reply is transformers + PEFT's.
    pg.goto(f"{server.url}/#/chat")
    model = f"run:{run['id']}"
    pg.wait_for_selector(f"[data-testid=chat-model] option[value='{model}']", state="attached")
    pg.select_option("[data-testid=chat-model]", model)
    pg.fill("[data-testid=chat-temp]", "0")
    pg.fill("[data-testid=chat-max]", "12")
    question = "What is the capital of Italy?"
    pg.fill("[data-testid=chat-input]", question)
    pg.click("[data-testid=chat-send]")
    pg.wait_for_selector("[data-testid=chat-reply]")  # the button is disabled in that same tick
    pg.wait_for_function("!document.querySelector('[data-testid=chat-send]').disabled")
    reply = pg.inner_text("[data-testid=chat-reply]").strip()
    assert reply and reply == _greedy(tuned, lm, question, 12)
    shot(pg, "lora_chat")
