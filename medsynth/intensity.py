"""Robust intensity normalisation: per-volume statistics, the map to [-1, 1] and back.

Intensities are mapped to [-1, 1] per volume by robust percentiles inside the foreground, the background
(outside the foreground) set to -1. Each domain's typical statistics are stored with the model so that a
translation can be brought back to the target domain's intensity range (for CT: Hounsfield units).

No MONAI here: conversion imports this and the networks only, and starts in a fraction of MONAI's import time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

#: Percentiles (inside the foreground) mapped to -1 and +1.
LOWER_PERCENTILE = 0.5
UPPER_PERCENTILE = 99.5
#: Voxels above ``min + FOREGROUND_FRACTION * (p99.5 - min)`` are foreground: zero background of
#: skull-stripped MRI, air around a CT body, dark padding of X-rays and PNG slices.
FOREGROUND_FRACTION = 0.02


@dataclass
class IntensityStats:
    """Robust intensity statistics of one volume, or the typical ones of a domain.

    Attributes:
        lo: value mapped to -1 (lower percentile inside the foreground).
        hi: value mapped to +1 (upper percentile inside the foreground).
        background: value outside the foreground (0 for most MRI, about -1000 for CT).
        threshold: foreground threshold.
    """

    lo: float
    hi: float
    background: float
    threshold: float

    def to_dict(self) -> dict[str, float]:
        """Plain floats for JSON and checkpoints."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> IntensityStats:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: float(data[k]) for k in ("lo", "hi", "background", "threshold")})

    @classmethod
    def median(cls, stats: Sequence[IntensityStats]) -> IntensityStats:
        """The domain's typical statistics: the median of each field over its volumes."""
        return cls(*(float(np.median([getattr(s, f) for s in stats])) for f in ("lo", "hi", "background", "threshold")))


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def strided_sample(x: np.ndarray) -> np.ndarray:
    """An evenly strided view of at most about 2 M of ``x``'s voxels: the statistics that tolerate a subsample
    (fill detection, background level, background median) take it instead of the whole volume."""
    return x.ravel()[:: max(1, x.size // 2_000_000)]


def background_level(x: np.ndarray, top: float) -> float:
    """The background's intensity: the most populated of 512 histogram bins between the minimum and ``top``
    when it holds over 10% of the voxels (the zero of skull-stripped MRI even when some voxels are negative,
    the air of CT), else the minimum."""
    lo = float(x.min())
    if top <= lo:
        return lo
    sample = strided_sample(x)
    counts, edges = np.histogram(sample, bins=512, range=(lo, top))
    peak = int(counts.argmax())
    if counts[peak] < 0.1 * sample.size:
        return lo
    inside = sample[(sample >= edges[peak]) & (sample <= edges[peak + 1])]
    return float(np.median(inside))


def foreground_threshold(x: np.ndarray) -> float:
    """Threshold above which voxels are foreground.

    An image with a constant background fill (skull-stripped or masked MRI: 0, or the image minimum, on at least
    10% of the voxels) has every voxel above the fill as foreground, as ``medsynth-eval`` masks it: the
    cerebrospinal fluid of a T1 is dark, but it is brain, and bright in the T2 to be made from it. Otherwise
    (CT air, the noisy background of an unmasked head, X-ray padding) :data:`FOREGROUND_FRACTION` of the way from
    the background level up to the upper percentile.
    """
    sample = strided_sample(x)
    for fill in (0.0, float(x.min())):
        if np.count_nonzero(sample == fill) >= 0.1 * sample.size:
            return fill
    top = float(np.percentile(x, UPPER_PERCENTILE))
    if top <= float(x.min()):
        top = float(x.max())
    bg = background_level(x, top)
    return bg + FOREGROUND_FRACTION * (top - bg)


def intensity_stats(x: np.ndarray | torch.Tensor) -> IntensityStats:
    """Robust statistics of one image (any shape)."""
    x = _as_numpy(x).astype(np.float32, copy=False)
    threshold = foreground_threshold(x)
    fg = x > threshold
    inside = x[fg] if fg.any() else x.ravel()
    lo, hi = (float(v) for v in np.percentile(inside, [LOWER_PERCENTILE, UPPER_PERCENTILE]))
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    # the background's median from the same subsample as the threshold: a median of every background voxel is
    # a partition of most of the volume, for a value that is one constant fill in most images
    sample = strided_sample(x)
    outside = sample[sample <= threshold]
    background = float(np.median(outside)) if outside.size else float(x.min())
    return IntensityStats(lo=lo, hi=hi, background=background, threshold=threshold)


#: Normalised values at or below this are background; the background is exactly -1.
BACKGROUND_LEVEL = -1.0 + 1e-3
#: The lowest normalised foreground value: the darkest tissue (below the lower percentile) stays tissue, not
#: background, so that a T1's ventricles still become the brightest part of a T2.
FOREGROUND_FLOOR = -1.0 + 2e-3


def normalise(x: torch.Tensor, stats: IntensityStats) -> torch.Tensor:
    """Map to [-1, 1] with ``stats``; the background becomes -1, the foreground at least
    :data:`FOREGROUND_FLOOR`."""
    # one new tensor, then in place: each temporary of a whole volume costs its page faults as well as its pass
    scale = 2.0 / (stats.hi - stats.lo)
    y = x.to(torch.float32, copy=True).mul_(scale).sub_(stats.lo * scale + 1.0)
    y.clamp_(FOREGROUND_FLOOR, 1.0)
    return y.masked_fill_(~(x > stats.threshold), -1.0)


def denormalise(y: torch.Tensor, stats: IntensityStats, foreground: torch.Tensor | None = None) -> torch.Tensor:
    """Map [-1, 1] back to a domain's intensities; outside ``foreground`` put the domain's background."""
    half = (stats.hi - stats.lo) / 2
    x = y.clamp(-1, 1).mul_(half).add_(stats.lo + half)
    if foreground is not None:
        x.masked_fill_(~foreground, stats.background)
    return x
