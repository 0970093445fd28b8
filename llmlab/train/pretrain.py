"""Pretraining: the next-token loss, presets, and glue from configs to the shared Trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.generate.engine import complete, make_params
from llmlab.model import ModelConfig, Transformer
from llmlab.model.loss import rows_per_chunk
from llmlab.tokenizer import load_tokenizer
from llmlab.train.config import TrainConfig, build
from llmlab.train.data import MANIFEST, PretrainBatches, TokenShards, eval_batches, prepare
from llmlab.train.distributed import barrier, init_distributed, shutdown
from llmlab.train.loop import Trainer
from llmlab.train.presets import DataConfig
from llmlab.train.seqlen import SeqLenWarmup
from llmlab.weights.registry import save_checkpoint


def next_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean cross-entropy of predicting token t+1 from tokens <= t:
    L = -1/(B*T) * sum_{b,t} log softmax(logits[b, t])[labels[b, t]]  (labels = inputs shifted).
    """
    # The model computes the loss fused with its output projection (llmlab/model/loss.py),
    # in fp32 even under bf16 autocast, where a 50k-way softmax would lose precision.
    loss = model(batch["input_ids"], targets=batch["labels"]).loss
    return loss, {"tokens": batch["labels"].numel()}


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: don't block


def estimate_bytes(mcfg: ModelConfig, tcfg: TrainConfig, world: int = 1, fsdp: bool = False,
                   device_type: str = "cpu") -> dict[str, int]:
    """A rough upper estimate of training memory per process, from shapes alone.

    fp32 weights + grads + 2 AdamW moments = 16 bytes/param (sharded over ranks under FSDP).
    Activations kept for backward per layer ~ (16*d_model + 3*d_ff) values per token (norm
    inputs, q/k/v, attention output, MLP in/hidden/out); SDPA stores no T x T matrix. The
    fused loss (model/loss.py) keeps only chunk buffers and the gradients of h and W; compiled
    on a GPU, the plain loss holds about 3 fp32 copies of the logits (logits, softmax, grad)."""
    n = mcfg.num_params()
    act_bytes = 2 if tcfg.precision == "bf16" else 4
    bt = tcfg.batch_size * tcfg.seq_len
    assert mcfg.d_ff is not None
    states = 16 * n // (world if fsdp else 1)
    acts = bt * mcfg.n_layer * (16 * mcfg.d_model + 3 * mcfg.d_ff) * act_bytes
    if tcfg.compile and device_type != "cpu":
        logits = bt * mcfg.vocab_size * 4 * 3
    else:
        rows = rows_per_chunk(device_type, mcfg.vocab_size, bt)
        logits = 3 * rows * mcfg.vocab_size * 4 + (bt + mcfg.vocab_size) * mcfg.d_model * 4
    return {"params": n, "states": states, "activations": acts, "logits": logits,
            "total": states + acts + logits}


def check_memory(mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device, world: int,
                 fsdp: bool) -> None:
    est = estimate_bytes(mcfg, tcfg, world, fsdp, device.type)
    free = available_bytes(device)
    if est["total"] > free:
        g = 2**30
        raise MemoryError(
            f"batch_size={tcfg.batch_size} x seq_len={tcfg.seq_len} needs about "
            f"{est['total'] / g:.1f} GiB (weights+grads+AdamW {est['states'] / g:.1f} GiB for "
            f"{est['params'] / 1e6:.1f}M params, activations {est['activations'] / g:.1f} GiB, "
            f"logits {est['logits'] / g:.1f} GiB) but only {free / g:.1f} GiB is free on "
            f"{device}; lower --batch-size or --seq-len and raise --grad-accum to keep the "
            "tokens per step")


# ----------------------------------------------------------------------------- running


def resolve_model(mcfg_values: dict[str, Any], tok: Any, tcfg: TrainConfig) -> ModelConfig:
    values = dict(mcfg_values)
    values.setdefault("vocab_size", tok.n_vocab)
    values.setdefault("max_seq_len", tcfg.seq_len)
    values["bos_token_id"], values["eos_token_id"] = tok.bos_id, tok.eos_id
    mcfg = build(ModelConfig, values, "model config")
    if mcfg.vocab_size < tok.n_vocab:
        raise ValueError(f"model vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                         f"{tok.n_vocab} ids ({tok.name}); set --vocab-size {tok.n_vocab} or "
                         "more")
    if tcfg.seq_len > mcfg.max_seq_len:
        raise ValueError(f"seq_len={tcfg.seq_len} exceeds the model's max_seq_len="
                         f"{mcfg.max_seq_len}")
    return mcfg


def bytes_per_token(tok: Any, batches: list[dict[str, Any]]) -> float:
    """Text bytes per target token over `batches` (every rank's); special tokens, the
    document boundaries, are no text and count 0."""
    special = set(tok.special_tokens.values())
    table = torch.tensor([0 if i in special else len(tok.token_bytes(i))
                          for i in range(tok.n_vocab)])
    labels = torch.cat([b["labels"].flatten() for b in batches])
    return float(table[labels].sum()) / labels.numel()


def prepare_data(dcfg: DataConfig, run_dir: Path, d: Any, progress: bool) -> Path:
    """The prepared data dir: the given one, or RUN_DIR/data made from `inputs` once."""

    if dcfg.data is not None:
        return Path(dcfg.data)
    out = run_dir / "data"
    if d.is_main and not (out / MANIFEST).exists():
        inputs = [s for s in dcfg.inputs.split(",") if s]
        prepare(inputs, dcfg.tokenizer, out, dcfg.val_fraction, progress=progress)
    barrier(d)
    return out


def run_pretrain(model_values: dict[str, Any], tcfg: TrainConfig, dcfg: DataConfig,
                 run_dir: str | Path, preset: str | None = None) -> dict[str, Any]:
    tcfg.validate()
    run_dir = Path(run_dir)
    d = init_distributed(tcfg.device, tcfg.fsdp)
    try:
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        data_dir = prepare_data(dcfg, run_dir, d, tcfg.progress)
        train = TokenShards(data_dir, "train")
        tok = load_tokenizer(data_dir / "tokenizer")
        if tok.n_vocab != train.n_vocab:
            raise ValueError(f"{data_dir}/tokenizer has {tok.n_vocab} ids but the manifest says "
                             f"the shards were made with {train.n_vocab}; prepare the data again")
        mcfg = resolve_model(model_values, tok, tcfg)
        check_memory(mcfg, tcfg, d.device, d.world, d.fsdp and d.enabled)
        try:
            val = TokenShards(data_dir, "val")
            evals = eval_batches(val, tcfg.seq_len, tcfg.batch_size, tcfg.eval_batches,
                                 d.rank, d.world)
            # Over every rank's batches (this rank's alone with one process: no second read).
            per_token = bytes_per_token(tok, evals if d.world == 1 else eval_batches(
                val, tcfg.seq_len, tcfg.batch_size, tcfg.eval_batches))
        except ValueError:  # no val split: train without validation
            evals, per_token = [], None
        resolved = {"preset": preset, "model": mcfg.to_dict(), "train": dataclasses.asdict(tcfg),
                    "data": {**dataclasses.asdict(dcfg), "data": str(data_dir)}}
        if d.is_main:
            (run_dir / "config.json").write_text(json.dumps(resolved, indent=1) + "\n")
        torch.manual_seed(tcfg.seed)  # same initial weights on every rank
        model = Transformer(mcfg)

        batches = SeqLenWarmup(PretrainBatches(train, tcfg.seq_len, tcfg.batch_size,
                                               tcfg.seed, d.rank, d.world),
                               tcfg.grad_accum, tcfg.seq_len_start, tcfg.seq_len_warmup)
        prompt = [i for i in (tok.bos_id if tok.bos_id is not None else tok.eos_id,)
                  if i is not None] + tok.encode(tcfg.sample_prompt)

        def sample(m: nn.Module) -> list[str]:
            if not tcfg.sample_tokens:
                return []
            n = min(tcfg.sample_tokens, mcfg.max_seq_len - len(prompt))
            params = make_params(tok, max_new_tokens=n, temperature=0.8, seed=0)
            return [tcfg.sample_prompt + complete(m, tok, [prompt], params)[0].text]

        manifest = train.manifest
        info = {"preset": preset, "n_params": model.num_params(),
                "unigram_entropy_nats": manifest.get("unigram_entropy_nats"),
                "train_tokens": train.n_tokens, "data": str(data_dir),
                "tokens_per_step": tcfg.batch_size * tcfg.seq_len * tcfg.grad_accum * d.world}
        compat = {"model": mcfg.to_dict(),
                  "tokenizer": {k: manifest["tokenizer"][k] for k in ("name", "n_vocab")},
                  "train_tokens": train.n_tokens}
        trainer = Trainer(model, tcfg, run_dir, batches, next_token_loss, dist=d,
                          export=lambda m, out: save_checkpoint(m, out, tok),  # type: ignore
                          eval_data=evals, sample_fn=sample, run_info=info, compat=compat,
                          val_bytes_per_token=per_token)
        return {**trainer.fit(), "unigram_entropy_nats": info["unigram_entropy_nats"]}
    finally:
        shutdown(d)
