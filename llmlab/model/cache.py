"""A static key/value cache: buffers are allocated once, so decoding never recomputes the past
and never reallocates (which also keeps shapes stable for CUDA graphs)."""

from __future__ import annotations

import torch

from llmlab.model.config import ModelConfig


class KVCache:
    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        static: bool = False,
    ) -> None:
        assert cfg.n_kv_head is not None and cfg.head_dim is not None
        shape = (batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.batch_size = batch_size
        self.length = 0  # positions filled in every row (a static cache keeps 0: see slots)
        self._pending = 0
        self._cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Static mode: attention always spans the whole buffer (masked), and writes go to
        # `slots`, a tensor. No shape depends on how much is filled, so a decode step can be
        # compiled once and replayed (CUDA graphs).
        self.static = static
        self.slots: torch.Tensor | None = None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values after the stored ones; return everything so far."""
        if self.static:
            assert self.slots is not None, "static cache: set cache.slots before the forward"
            # Under autocast, RoPE's fp32 tables promote k: store in the cache's dtype.
            self.k[layer].index_copy_(2, self.slots, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(2, self.slots, v.to(self.v[layer].dtype))
            return self.k[layer], self.v[layer]
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions needed, {self.max_len} allocated")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        self._pending = t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def static_mask(self, key_valid: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, T, max_len) for a static cache: a query in slot s sees the filled, non-padding
        slots up to s (`key_valid` (B, max_len): 0 over padding)."""
        assert self.slots is not None, "static cache: set cache.slots before the forward"
        keys = torch.arange(self.max_len, device=self.slots.device)
        mask = (keys[None, :] <= self.slots[:, None])[None, None]
        if key_valid is not None:
            # Each query also sees its own slot, so a padding row never has an empty softmax.
            own = (keys[None, :] == self.slots[:, None])[None, None]
            mask = (mask & key_valid[:, None, None, :].bool()) | own
        return mask

    def advance(self) -> None:
        """Called once per forward, after every layer wrote its slice (a no-op when static:
        writes go to `slots`, and nothing is pending)."""
        self.length += self._pending
        self._pending = 0

    def repeat_rows(self, n: int) -> None:
        """Row i becomes rows i*n .. i*n+n-1: one prefill of a prompt serves n samples of it."""
        self.k = [k.repeat_interleave(n, 0) for k in self.k]
        self.v = [v.repeat_interleave(n, 0) for v in self.v]
        self._cross = {i: (k.repeat_interleave(n, 0), v.repeat_interleave(n, 0))
                       for i, (k, v) in self._cross.items()}
        self.batch_size *= n

    def cross_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._cross.get(layer)

    def set_cross_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._cross[layer] = (k, v)
