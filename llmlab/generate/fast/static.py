"""Fixed-shape decoding for `torch.compile` and CUDA graphs.

The dynamic engine slices the cache to the filled length, so every step has a new shape.
Here the cache is a static buffer, attention spans all of it under a mask, and the slot to
write is a tensor: every decode step has identical shapes and tensor addresses. That lets
`torch.compile` fuse the step once, and on CUDA lets a captured graph replay the whole
step with one launch instead of hundreds (batch-1 decoding of a small model is bound by
kernel launches, not by FLOPs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from llmlab.generate.sampling import SamplingParams, Step, Stopper, sample
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer


class StaticDecoder:
    """Decode with a static cache; `compile` uses torch.compile, `cuda_graph` captures the step."""

    def __init__(
        self, model: Transformer, batch_size: int, max_len: int, compile: bool = False,
        cuda_graph: bool | None = None,
    ) -> None:
        self.model, self.b, self.max_len = model, batch_size, max_len
        dev = model.device
        # Under autocast (an RL rollout inside the training step) the keys/values come out in
        # the autocast dtype, and the captured step must run under the same autocast.
        self.amp = torch.is_autocast_enabled(dev.type)
        self.amp_dtype = torch.get_autocast_dtype(dev.type)
        kv_dtype = self.amp_dtype if self.amp else model.dtype
        self.cache = KVCache(model.cfg, batch_size, max_len, dev, kv_dtype, static=True)
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.long, device=dev)
        # Inputs of the decode step live at fixed addresses (copied into before each replay).
        self.x = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        step: Callable[[], torch.Tensor] = self._step
        if compile:
            step = torch.compile(self._step, fullgraph=False, dynamic=False)
        self._fn = step
        self.use_graph = dev.type == "cuda" if cuda_graph is None else cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def _step(self) -> torch.Tensor:
        self.cache.slots = self.slot
        out = self.model(self.x, attention_mask=self.key_valid, positions=self.pos,
                         cache=self.cache, last_only=True)
        assert out.logits is not None
        return out.logits[:, -1]

    def _capture(self, fn: Callable[[], torch.Tensor] | None = None
                 ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm `fn` (default: the decode step) up, then capture it as one CUDA graph."""
        fn = fn or self._fn
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # autocast's weight-cast cache must stay off while capturing: a cached cast would
        # point into the graph's private memory after the capture ends.
        amp = torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp, cache_enabled=False)
        with torch.cuda.stream(side), amp:
            for _ in range(3):  # warm-up: compile, autotune and allocate outside the capture
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), amp:
            out = fn()
        return graph, out

    def prefill(self, prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, int]:
        """Left-pad and run the prompts; returns (last logits, first free slot)."""
        dev = self.model.device
        t0 = max(len(p) for p in prompts)
        ids = torch.full((self.b, t0), pad_id, dtype=torch.long, device=dev)
        self.key_valid.fill_(1)
        for i, p in enumerate(prompts):
            ids[i, t0 - len(p):] = torch.tensor(p, dtype=torch.long, device=dev)
            self.key_valid[i, : t0 - len(p)] = 0
        self.positions = (self.key_valid.cumsum(-1) - 1).clamp(min=0)
        self.cache.slots = torch.arange(t0, device=dev)
        out = self.model(ids, attention_mask=self.key_valid, positions=self.positions[:, :t0],
                         cache=self.cache, last_only=True)
        assert out.logits is not None
        return out.logits[:, -1], t0

    def decode_step(self, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        self.x.copy_(tokens.view(self.b, 1))
        self.pos.copy_(self.positions[:, slot : slot + 1])
        self.slot.fill_(slot)
        if not self.use_graph:
            return self._fn()
        if self.graph is None:
            self.graph, self.out = self._capture()
            # The capture ran the step on the inputs above; replay to be sure the output is
            # the graph's own buffer.
        assert self.graph is not None and self.out is not None
        self.graph.replay()
        return self.out

    def _start(self, prompts: list[list[int]], params: SamplingParams,
               pad_id: int) -> tuple[torch.Tensor, int]:
        """Check the request against this decoder, then prefill: (last logits, next slot)."""
        params.validate()
        if len(prompts) != self.b:
            raise ValueError(f"decoder was built for batch {self.b}, got {len(prompts)} prompts")
        logits, slot = self.prefill(prompts, pad_id)
        if slot + params.max_new_tokens > self.max_len:
            raise ValueError(f"{slot} + {params.max_new_tokens} tokens exceed the static cache "
                             f"of {self.max_len}")
        return logits, slot

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 pad_id: int = 0) -> Iterator[Step]:
        logits, slot = self._start(prompts, params, pad_id)
        dev = self.model.device
        gen = torch.Generator(device=dev).manual_seed(params.seed) if params.seed is not None \
            else None
        stopper = Stopper(params, self.b, dev, pad_id)
        for i in range(params.max_new_tokens):
            nxt = sample(logits, params, gen)
            step = stopper.step(i, nxt)
            yield step
            # Without stop tokens only the budget ends a row, and the host knows when: no
            # device sync per step, so the CPU queues the next replay while the GPU works.
            if i == stopper.last or (params.stop_token_ids and bool(step.done.all())):
                return
            logits = self.decode_step(nxt, slot)
            slot += 1
