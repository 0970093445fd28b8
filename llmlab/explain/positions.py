"""What the model knows about order: the 2017 sinusoidal table and RoPE's rotation angles."""

from __future__ import annotations

import math

import torch

from llmlab.model.positions import rope_angles, sinusoidal_table


def sinusoidal_panel(n_pos: int, d_model: int) -> torch.Tensor:
    """(n_pos, d_model) PE table: even dims sin, odd dims cos, wavelengths 2π..10000·2π."""
    return sinusoidal_table(n_pos, d_model)


def rope_panel(n_pos: int, head_dim: int, theta: float) -> dict[str, torch.Tensor]:
    """RoPE rotates each (i, i + d/2) pair of q and k by pos * theta^(-2i/d).

    Returns the raw angles (n_pos, head_dim/2), the angles wrapped to [0, 2π) (what the
    rotation actually sees), and each pair's wavelength in tokens."""
    ang = rope_angles(torch.arange(n_pos), head_dim, theta)
    wavelength = 2 * math.pi / ang[1] if n_pos > 1 else torch.full((head_dim // 2,), math.inf)
    return {
        "angles": ang.float(),
        "wrapped": torch.remainder(ang, 2 * math.pi).float(),
        "wavelength": wavelength.float(),
    }
