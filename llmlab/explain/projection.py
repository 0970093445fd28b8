"""2-D maps of embeddings by PCA: fit on a set of points, then place new points (a query)
in the same plane."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PCA2D:
    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (2, D) orthonormal rows, largest variance first
    explained: torch.Tensor  # (2,) fraction of the total variance on each axis

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) @ self.components.T


def fit_pca(x: torch.Tensor, k: int = 2) -> PCA2D:
    """Principal axes from the SVD of the centred data. Each axis's sign is fixed so its
    largest-magnitude loading is positive (SVD signs are otherwise arbitrary)."""
    x = x.detach().double()
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"need an (N, D) matrix of points, got shape {tuple(x.shape)}")
    mean = x.mean(0)
    xc = x - mean
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:k]
    if comps.shape[0] < k:  # fewer points than axes: pad with zero axes
        comps = torch.cat([comps, comps.new_zeros(k - comps.shape[0], x.shape[1])])
        s = torch.cat([s, s.new_zeros(k)])
    big = comps.abs().argmax(1)
    signs = torch.sign(comps[torch.arange(k), big])
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    var = s**2
    total = var.sum()
    explained = var[:k] / total if total > 0 else var[:k] * 0
    return PCA2D(mean, comps, explained)


def project_2d(points: torch.Tensor, extra: torch.Tensor | None = None) -> dict[str, list]:
    """Fit on `points`, return their 2-D coordinates and `extra`'s (e.g. the query) in the
    same plane, with the variance each axis explains."""
    p = fit_pca(points)
    out = {"points": p.transform(points).tolist(), "explained": p.explained.tolist()}
    if extra is not None:
        out["extra"] = p.transform(extra.reshape(-1, points.shape[1])).tolist()
    return out
