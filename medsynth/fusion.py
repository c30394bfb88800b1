"""How the three slice-wise passes of ``--axis all`` become one volume.

A slice-wise network translates each slice on its own, so a single pass leaves stripes between slices; passes along
the other two axes are consistent across those slices but see each head from a side the network was not trained
on (an axial-trained network renders a lesion darker in coronal and sagittal slices). Three ways to combine them:

- ``mean`` and ``median``: voxel by voxel over the three passes.
- ``detail``: the axial pass smoothed along the inferior-superior axis (Gaussian, :data:`DETAIL_SIGMA` voxels), plus
  what the mean of the coronal and sagittal passes holds finer than that along the same axis. A region's intensity
  is the axial pass's; the other two add only the through-plane detail that removes the stripes.

Torch only (no SciPy, no MONAI): this runs on the conversion path, on whatever device the passes ran on. Torch is
imported where it is used, so that the command lines can name the fusions without paying for its import.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from medsynth.config import AXES, AXIS_INDEX

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_FUSION", "DETAIL_SIGMA", "FUSIONS", "fuse_passes", "smooth_along"]

FUSIONS: tuple[str, ...] = ("mean", "median", "detail")
DEFAULT_FUSION = "mean"
#: voxels; chosen on the fold models' own training patients (scripts/study_data/intros/study_fusion.md)
DETAIL_SIGMA = 2.0


def smooth_along(y: torch.Tensor, dim: int, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of ``y`` along one dimension, as SciPy's ``gaussian_filter1d`` with ``mode="nearest"``
    (edges extended, kernel cut at 4 sigma); ``sigma <= 0`` returns ``y``.

    Raises:
        TypeError: ``y`` is not floating point.
    """
    import torch

    if not y.is_floating_point():
        raise TypeError(f"smooth_along needs a floating-point tensor, got {y.dtype}")
    if sigma <= 0:
        return y
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    weights = (kernel / kernel.sum()).tolist()
    moved = y.movedim(dim, -1).float()  # half precision would lose the small weights
    n = moved.shape[-1]
    edge = (*moved.shape[:-1], radius)
    padded = torch.cat([moved[..., :1].expand(edge), moved, moved[..., -1:].expand(edge)], dim=-1)
    # a sum of shifted views: a convolution would first copy the volume once per kernel tap (17 at sigma 2)
    out = padded[..., :n] * weights[0]
    for i in range(1, 2 * radius + 1):
        out.add_(padded[..., i:i + n], alpha=weights[i])
    return out.to(y.dtype).movedim(-1, dim)


def fuse_passes(passes: dict[str, torch.Tensor], method: str = DEFAULT_FUSION) -> torch.Tensor:
    """Combine per-axis passes ``{axis: (C, X, Y, Z) tensor}`` (RAS voxel order, so Z is inferior-superior).

    Args:
        passes: one pass per axis of :data:`medsynth.config.AXES`; a single pass is returned as it is.
        method: one of :data:`FUSIONS`.

    Returns:
        One (C, X, Y, Z) tensor, on the passes' device.

    Raises:
        ValueError: an unknown method, or ``detail`` without all three passes.
    """
    import torch

    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}: use one of {', '.join(FUSIONS)}")
    if len(passes) == 1:
        return next(iter(passes.values()))
    if method == "mean":
        return torch.stack(list(passes.values())).mean(0)
    if method == "median":
        return torch.stack(list(passes.values())).median(0).values
    if set(passes) != set(AXES):
        raise ValueError(f"detail fusion needs the three passes {', '.join(AXES)}, got {', '.join(passes)}")
    dim = AXIS_INDEX["axial"] + 1  # the slice-stacking axis of axial slices, after the channel
    axial = passes["axial"]
    others = (passes["coronal"] + passes["sagittal"]) / 2
    return smooth_along(axial, dim, DETAIL_SIGMA) + others - smooth_along(others, dim, DETAIL_SIGMA)
