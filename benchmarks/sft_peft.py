"""Step time and peak memory of SFT: full FT, LoRA and QLoRA, llmlab vs transformers + PEFT.

Each configuration runs in its own process (peak RSS is per process):
    PYTHONPATH=. python benchmarks/sft_peft.py [--steps 5 --batch 4 --seq 128]
Same model (SmolLM2-135M-Instruct, fp32 on CPU), batch, LoRA r=8 on all-linear. The PEFT
side of QLoRA needs bitsandbytes (GPU); on CPU it is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch


def _batch(b: int, t: int) -> torch.Tensor:
    return torch.randint(0, 49152, (b, t), generator=torch.Generator().manual_seed(0))


def _time(model: torch.nn.Module, ids: torch.Tensor, steps: int, hf: bool) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids) if hf else model(ids)
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(),
                                                 ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return sum(times[1:]) / steps  # the first step warms up allocators


def one(impl: str, method: str, steps: int, b: int, t: int) -> dict:
    import llmlab

    ids = _batch(b, t)
    lm = llmlab.load("smollm2-135m-instruct")
    if impl == "llmlab":
        model: torch.nn.Module = lm.model
        if method != "full":
            from llmlab.peft.model import get_peft_model

            model = get_peft_model(lm.model, method, r=8, target_modules="all-linear")
        hf = False
    else:
        import transformers

        from llmlab.weights.hf import save_hf

        d = tempfile.mkdtemp()
        save_hf(lm.model, d)
        del lm
        if method == "qlora":
            return {"impl": impl, "method": method, "skipped": "bitsandbytes 4-bit needs a GPU"}
        model = transformers.AutoModelForCausalLM.from_pretrained(d)
        if method != "full":
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(
                r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        hf = True
    model.train()
    s = _time(model, ids, steps, hf)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "method": method, "step_s": round(s, 3), "peak_rss_mib": round(rss)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "METHOD"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one, a.steps, a.batch, a.seq)))
        return
    for method in ("full", "lora", "qlora"):
        for impl in ("llmlab", "transformers+peft"):
            r = subprocess.run([sys.executable, __file__, "--one", impl, method, "--steps",
                                str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq)],
                               capture_output=True, text=True)
            print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else
                  f"{impl} {method}: failed: {r.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
    main()
