"""Grammar-constrained decoding speed on CPU at batch 1: the same prompt and the same number
of new tokens, unconstrained and constrained by a JSON schema, side by side in one run:

    .venv/bin/python benchmarks/constrained_decode.py [--threads 1] [--new-tokens 64]

Both routes SmolLM2 takes on a CPU are timed: the int8 model (the lean decoder, what
`llmlab serve` runs) and the fp32 model (`iter_decode`'s plain loop). The schema holds a
string with a `minLength` the run can't reach, so the constrained output never ends early and
both runs make exactly `--new-tokens` tokens; every step of it computes a real mask.
Runs alternate (free, constrained, free, ...) and the best of `--repeat` counts, so load
from other processes on a shared machine hits both sides alike. Also printed: the mask's own
cost per step (llguidance's mask + unpacking + the masked fill), timed alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import emit, print_machine, stopwatch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.generate.chat import encode_prompts  # noqa: E402
from llmlab.generate.constrain import Guide, json_schema  # noqa: E402
from llmlab.generate.engine import iter_decode, make_params  # noqa: E402
from llmlab.model.quant import quantize_int8_  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper, as JSON."
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1800, "maximum": 2000},
        "story": {"type": "string", "minLength": 2000},
    },
    "required": ["title", "year", "story"],
    "additionalProperties": False,
}


def tok_per_s(model, ids: list[int], params, n_new: int) -> tuple[float, float]:
    """(wall-clock tok/s, CPU-time tok/s): on a shared, busy machine the process's own CPU
    time is the steadier measure of the work each side does."""
    t, cpu = stopwatch(), time.process_time()
    n = sum(1 for _ in iter_decode(model, [ids], params))
    dt, dcpu = t(), time.process_time() - cpu
    assert n == n_new, f"{n} tokens, expected {n_new}"
    return n / dt, n / dcpu


def mask_cost_us(lm, ids: list[int], params, steps: int) -> float:
    """Microseconds per step of Guide.mask + advance along the greedy constrained output."""
    toks = [s.tokens.item() for s in iter_decode(lm.model, [ids], params)][:steps]
    g = Guide([params.constraint], params.stop_token_ids, lm.cfg.vocab_size)
    logits = torch.randn(1, lm.cfg.vocab_size)
    t = stopwatch()
    for tk in toks:
        g.mask(logits)
        g.advance([tk])
    return t() / len(toks) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    line = print_machine(threads=a.threads)
    torch.set_num_threads(a.threads)
    lm = llmlab.load("smollm2-135m-instruct")
    ids = encode_prompts(lm, [PROMPT], chat=True)[0]
    con = json_schema(SCHEMA)
    # temperature 0: greedy, the same work per token on both sides
    free = make_params(lm.tokenizer, max_new_tokens=a.new_tokens, temperature=0)
    constrained = make_params(lm.tokenizer, max_new_tokens=a.new_tokens, temperature=0,
                              constraint=con)
    models = {"int8 (lean decoder)": quantize_int8_(copy.deepcopy(lm.model)),
              "fp32 (iter_decode)": lm.model}
    results = {}
    for name, model in models.items():
        best = {k: [0.0, 0.0] for k in ("free", "constrained")}  # (wall, cpu) tok/s
        for _ in range(a.repeat + 1):  # the first round warms up and counts too
            for side, p in (("free", free), ("constrained", constrained)):
                got = tok_per_s(model, ids, p, a.new_tokens)
                best[side] = [max(b, g) for b, g in zip(best[side], got, strict=True)]
        res = {}
        for j, clock in enumerate(("wall", "cpu")):
            f, c = best["free"][j], best["constrained"][j]
            res[clock] = {"free": round(f, 2), "constrained": round(c, 2),
                          "ratio": round(c / f, 3)}
            print(f"{name:20s} {clock:4s} free {f:6.2f} tok/s  constrained {c:6.2f} tok/s  "
                  f"ratio {c / f:.3f}", flush=True)
        results[name] = res
    sample = "".join(lm.tokenizer.decode([s.tokens.item()])
                     for s in iter_decode(models["int8 (lean decoder)"], [ids], constrained))
    print(f"constrained output begins: {sample[:80]!r}")
    us = mask_cost_us(lm, ids, constrained, a.new_tokens)
    print(f"mask + advance per step: {us:.0f} us")
    emit({"machine": line, "new_tokens": a.new_tokens, "results": results,
          "mask_us_per_step": round(us, 1)})


if __name__ == "__main__":
    main()
