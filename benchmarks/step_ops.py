"""Operations per training step, llmlab vs transformers + PEFT: the count that bounds a small
model's eager step on a GPU.

On an H100 the eager SmolLM2-135M LoRA step is launch-bound: the host issues its ~13k small
kernels more slowly than the GPU runs them (BENCHMARKS.md, "SFT / PEFT"). So the number of
operations a step dispatches predicts its eager GPU time better than a CPU clock does.

    PYTHONPATH=. python benchmarks/step_ops.py                 # CPU: ATen ops dispatched
    PYTHONPATH=. python benchmarks/step_ops.py --device cuda   # GPU: CUDA kernels run
    PYTHONPATH=. python benchmarks/step_ops.py --host-time 40  # CPU: host cost per step

`--host-time N` times N eager steps per side on a *narrow* model: the SmolLM2-135M layout
(30 layers, 9 query and 3 KV heads, SwiGLU, tied embeddings) with every width cut to a few
dozen. What remains of a step is per-operation cost: Python, autograd and the dispatcher, the
part a launch-bound GPU step pays on the host, which an op count does not see (our
autograd.Functions run Python). It is not a GPU forecast: a tiny bf16 matmul costs ~15 us on
this CPU, far more than a launch, so a path with more matmuls (LoRA's) is overcharged. Use
it to find host overhead in one implementation, before and after a change.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
import sft_peft as S  # noqa: E402
from _common import emit, print_machine, stopwatch

NO_KERNEL = {"aten.empty", "aten.empty_strided", "aten.new_empty_strided", "aten.new_empty",
             "aten._unsafe_view",
             "aten.detach", "profiler._record_function_enter_new",
             "profiler._record_function_exit"}


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = str(func.overloadpacket)
        if not func.is_view and name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def narrow_cfg() -> Any:
    """SmolLM2-135M's layout with widths small enough that kernels cost ~nothing."""
    from llmlab.model.config import preset

    return preset("smollm2-135m", d_model=72, head_dim=8, d_ff=128, vocab_size=512,
                  max_seq_len=2048)


def train_step(impl: str, name: str, hf_dir: str, device: str, b: int, t: int
               ) -> tuple[Any, Any]:
    """(model, step): one side's model and a closure running one bf16-autocast training step
    (forward, loss, backward, fused AdamW), as in sft_peft.py."""
    model, _ = S._ours(name) if impl == "llmlab" else S._theirs(name, hf_dir, True, device)
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=True)
    ids = torch.randint(0, S._cfg().vocab_size, (b, t + 1),
                        generator=torch.Generator().manual_seed(1)).to(device)
    x, y = ids[:, :-1], ids[:, 1:]

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def host_time(impl: str, name: str, hf_dir: str, b: int, t: int, steps: int) -> list[float]:
    """Wall ms of each of `steps` eager CPU steps (after two warm-ups) on the narrow model."""

    model, step = train_step(impl, name, hf_dir, "cpu", b, t)
    out = []
    for i in range(steps + 2):
        t0 = stopwatch()
        step()
        if i >= 2:
            out.append(t0() * 1e3)
    if impl == "llmlab" and getattr(model, "method", None) in ("lora", "qlora"):
        # The per-forward refresh of LoRA's cached casts alone, in its steady state.
        from llmlab.peft.lora_groups import refresh_casts

        t0 = stopwatch()
        for _ in range(50):
            refresh_casts(model.base_model, torch.bfloat16)
        REFRESH_MS[name].append(t0() / 50 * 1e3)
    return out


REFRESH_MS: dict[str, list[float]] = collections.defaultdict(list)


def count(impl: str, name: str, hf_dir: str, device: str, b: int, t: int) -> dict[str, Any]:
    _, step = train_step(impl, name, hf_dir, device, b, t)
    step()  # warm-up: first-use allocations and caches are not a step's cost
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kinds = collections.Counter(e.name for e in prof.events()
                                    if e.device_type == torch.autograd.DeviceType.CUDA)
        return {"impl": impl, "config": name, "ops": sum(kinds.values()),
                "top": kinds.most_common(8)}
    folded = [0]
    try:
        import llmlab.peft.lora_fast as fast
    except ImportError:  # an llmlab from before the eager fast path: nothing to fold
        fast = None
    mm_f32 = fast._mm_f32 if fast is not None else None

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        folded[0] += a.dtype != torch.float32  # CUDA: fp32 out of cuBLAS, no cast
        return mm_f32(a, b)

    if fast is not None:
        fast._mm_f32 = counted
    mode = _Ops()
    try:
        with mode:
            step()
    finally:
        if fast is not None:
            fast._mm_f32 = mm_f32
    return {"impl": impl, "config": name, "ops": sum(mode.ops.values()),
            "cuda_folded_casts": folded[0], "top": mode.ops.most_common(8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--configs", default="full,lora-r8-qv,lora-r16-all,qlora-r16-all")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--host-time", type=int, default=0, metavar="N",
                    help="time N steps per side on the narrow model instead of counting ops")
    ap.add_argument("--rounds", type=int, default=3, help="with --host-time: rounds, in turn")
    ap.add_argument("--impls", default=",".join(S.IMPLS), help="sides to run, comma-separated")
    a = ap.parse_args()
    print_machine(a.device)
    names = a.configs.split(",")
    bad = [n for n in names if n not in S.CONFIGS]
    if bad:
        raise SystemExit(f"--configs: unknown {bad}; valid: {', '.join(S.CONFIGS)}")
    import importlib.util

    from llmlab.model import Transformer
    from llmlab.weights.hf import save_hf

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if a.host_time:
        return _host_table(a, names, has_bnb)
    unit = "CUDA kernels run" if a.device == "cuda" else "ATen ops dispatched"
    print(f"# {unit} per training step, B x T = {a.batch} x {a.seq}, bf16 autocast, "
          f"fused AdamW; torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as hf_dir:
        torch.manual_seed(0)
        save_hf(Transformer(S._cfg()), hf_dir)
        for name in names:
            for impl in S.IMPLS:
                if impl != "llmlab" and S.CONFIGS[name].get("nf4") and not has_bnb:
                    print(f"{name} {impl}: skipped (needs bitsandbytes)")
                    continue
                r = count(impl, name, hf_dir, a.device, a.batch, a.seq)
                rows.append(r)
                folded = r.get("cuda_folded_casts", 0)
                print(f"{name:14s} {impl:18s} {r['ops']:6d} ({folded} casts CUDA folds)  "
                      f"top {r['top'][:5]}", flush=True)
    # On the CPU, the casts CUDA folds into cuBLAS are taken off (see the module docstring).
    ops = {(r["config"], r["impl"]): r["ops"] - r.get("cuda_folded_casts", 0) for r in rows}
    _table(names, ops, "", "{:d}")
    emit(rows, a.out)


def _table(names: list[str], val: dict[tuple[str, str], Any], unit: str, fmt: str) -> None:
    """The markdown table: each config, both sides, their ratio and ours against our full."""
    full = val.get(("full", "llmlab"))
    print(f"\n| config | llmlab{unit} | PEFT{unit} | PEFT / llmlab | llmlab / llmlab full |\n"
          "|---|---|---|---|---|")
    for name in names:
        ours, theirs = val.get((name, "llmlab")), val.get((name, "transformers+peft"))
        ratio = f"{theirs / ours:.2f}x" if ours and theirs else "-"
        rel = f"{ours / full:.2f}" if ours and full else "-"
        show = [fmt.format(v) if v else "-" for v in (ours, theirs)]
        print(f"| {name} | {show[0]} | {show[1]} | {ratio} | {rel} |")


def _host_table(a: argparse.Namespace, names: list[str], has_bnb: bool) -> None:
    import statistics

    from llmlab.model import Transformer
    from llmlab.weights.hf import save_hf

    torch.set_num_threads(1)
    S._cfg = narrow_cfg  # both sides build from S._cfg: ours directly, theirs via hf_dir
    print(f"# host ms per eager step, narrow SmolLM2 layout {narrow_cfg().n_layer} layers, "
          f"B x T = {a.batch} x {a.seq}, bf16 autocast, fused AdamW, 1 thread; "
          f"torch {torch.__version__}; median of {a.host_time} steps, {a.rounds} rounds",
          flush=True)
    ms: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as hf_dir:
        torch.manual_seed(0)
        save_hf(Transformer(narrow_cfg()), hf_dir)
        for rnd in range(a.rounds):
            for name in names:
                for impl in a.impls.split(","):
                    if impl != "llmlab" and S.CONFIGS[name].get("nf4") and not has_bnb:
                        continue
                    m = statistics.median(host_time(impl, name, hf_dir, a.batch, a.seq,
                                                    a.host_time))
                    ms[(name, impl)].append(m)
                    print(f"round {rnd} {name:14s} {impl:18s} {m:7.2f} ms", flush=True)
    _table(names, {k: statistics.median(v) for k, v in ms.items()}, " ms", "{:.1f}")
    for name, v in REFRESH_MS.items():
        print(f"{name}: llmlab refresh_casts, steady state: {statistics.median(v):.3f} ms")
    emit({f"{k[0]}/{k[1]}": v for k, v in ms.items()}, a.out)


if __name__ == "__main__":
    main()
