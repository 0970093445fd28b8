"""Singular values of real weight matrices and the best rank-r approximation error.

Eckart–Young–Mirsky: the truncated SVD is the best rank-r approximation in Frobenius norm,
and its error is exactly the energy in the dropped singular values, so the whole error
curve comes from one SVD: err(r) = sqrt(sum_{i>r} s_i^2) / ||W||_F.
"""

from __future__ import annotations

from typing import Any

import torch


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """Singular values, largest first (float64 for a clean error curve)."""
    return torch.linalg.svdvals(w.detach().double())


def rank_r_errors(s: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error of the best rank-r approximation for r = 0..len(s).

    Entry r is sqrt(sum_{i>=r} s_i^2) / sqrt(sum_i s_i^2) (0-based s), so entry 0 is 1."""
    sq = s.double() ** 2
    tail = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])  # tail[r] = sum_{i>=r}
    tail = torch.cat([tail, tail.new_zeros(1)])
    return (tail.clamp_min(0) / sq.sum()).sqrt()


def energy_rank(s: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest rank whose approximation keeps `fraction` of ||W||_F^2."""
    sq = s.double() ** 2
    kept = torch.cumsum(sq, 0) / sq.sum()
    return int((kept < fraction).sum()) + 1


def low_rank(w: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-r approximation U_r diag(s_r) V_r^T."""
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def projection_spectrum(
    model: Any, layer: int, proj: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Singular values and rank-r errors of one projection of a Llama-style decoder layer
    (q_proj, k_proj, v_proj, o_proj in attention; gate_proj, up_proj, down_proj in the MLP),
    and the weight's shape."""
    block = model.model.layers[layer]
    mod = block.self_attn if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else block.mlp
    w = getattr(mod, proj).weight
    s = singular_values(w)
    return s, rank_r_errors(s), list(w.shape)
