"""torchrun detection and process groups; DDP or FSDP2 wrapping; cross-rank reductions.

Run the same command under `torchrun --nproc_per_node=N`: RANK/WORLD_SIZE/LOCAL_RANK in the
environment switch it to data parallel (NCCL on GPU, gloo on CPU). Without them nothing here
touches torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(pref: str) -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {pref!r} requested but CUDA is not available")
    return torch.device(pref)


def init_distributed(device_pref: str = "auto", fsdp: bool = False) -> Dist:
    """Join the torchrun process group if launched by torchrun, else a single process."""
    device = pick_device(device_pref)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(device=device, fsdp=False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, local, world, device, fsdp)


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DDP by default; FSDP2 (`fully_shard` per block, then the root) with `fsdp`: parameters,
    gradients and optimizer state are sharded, so a model need only fit across all devices."""
    if not d.enabled:
        return model
    if d.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def _blocks(model: nn.Module) -> list[nn.Module]:
    stacks = [m for m in model.modules() if hasattr(m, "layers") and isinstance(m.layers,
                                                                              nn.ModuleList)]
    return [b for s in stacks for b in s.layers]


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Average of a scalar over ranks (every rank gets it)."""
    if d.enabled:
        x = x.detach().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= d.world
    return x


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, d: Dist
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Unsharded model (and optimizer) state on CPU; a collective call under FSDP."""
    if d.fsdp and d.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer else None
        return msd, osd
    m = unwrap(model)
    return m.state_dict(), optimizer.state_dict() if optimizer else None


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, msd: dict[str, Any],
                    osd: dict[str, Any], d: Dist) -> None:
    if d.fsdp and d.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, msd, options=opts)
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
        return
    _load_model(unwrap(model), msd)
    optimizer.load_state_dict(osd)


def _load_model(model: nn.Module, sd: dict[str, Any]) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Tied weights are saved once (safetensors refuses shared storage); the rest must match.
    tied = {"lm_head.weight", "encoder.embed_tokens.weight"}
    if unexpected or set(missing) - tied:
        raise ValueError(f"checkpoint weights don't fit the model: missing "
                         f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            # From pageable memory the copy would wait for the GPU's queue; pinned, it doesn't.
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
