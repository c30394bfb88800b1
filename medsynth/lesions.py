"""Lesion-aware augmentation: synthetic oedema-like blobs pasted into paired training slices.

Two training patients show the network one or two real lesions; a model trained on them renders an unseen
patient's oedema too dark in T2 (``scripts/results/study_lesion.md``). :func:`paste_lesions` adds, to both images
of a registered pair at the same place, a few blobs with smooth borders that are dark in the first domain (T1) and
bright in the second (T2), as oedema is, keeping a damped copy of the tissue's texture. The levels are drawn from
each slice's own histogram (a low quantile of the T1, a high one of the T2), so the blobs need no knowledge of a
scanner's units.

Channel layout (see :meth:`medsynth.training.DomainData.add_base`): ``[image, base, (context bases...),
standardised]`` for residual generators, ``[image]`` otherwise. The image and the standardised channel get the
blob; the base (the inverted histogram match of the image, a monotone decreasing map of it) is recomputed from the
new image through that same map, read off the slice itself. Context channels (2.5D) are left as they are.

Example:
    >>> a, b = paste_lesions(a, b, np.random.default_rng(0))     # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["paste_lesions"]

BACKGROUND = -1.0  # the normalised background level


def _blob(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float,
          softness: float) -> np.ndarray:
    """An ellipse's weight in [0, 1]: 1 inside, falling smoothly to 0 over about ``1 / softness`` of its radius."""
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    r = np.sqrt(((c * dy + s * dx) / radii[0]) ** 2 + ((-s * dy + c * dx) / radii[1]) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * softness, -50, 50)))


def _remap(old: np.ndarray, new: np.ndarray, mapped: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``mapped`` is a monotone function of ``old`` on ``where``; return it evaluated at ``new`` there."""
    order = np.argsort(old[where], kind="stable")
    xs, ys = old[where][order], mapped[where][order]
    out = mapped.copy()
    out[where] = np.interp(new[where], xs, ys)
    return out


def _with_blob(x: np.ndarray, weight: np.ndarray, quantile: float, fg: np.ndarray, texture: float) -> np.ndarray:
    """``x`` blended towards its own foreground ``quantile`` under ``weight``, keeping ``texture`` x the blob's
    local deviations from its mean."""
    level = float(np.quantile(x[fg], quantile))
    inside = weight > 0.5
    mean = float(x[inside].mean()) if inside.any() else level
    return (1.0 - weight) * x + weight * (level + texture * (x - mean))


def paste_lesions(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator, count: tuple[int, int] = (1, 3),
                  radius: tuple[float, float] = (4.0, 16.0), dark: tuple[float, float] = (0.03, 0.25),
                  bright: tuple[float, float] = (0.85, 0.98), texture: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste ``count`` oedema-like blobs into a registered pair of training slices ``a`` (T1-like) and ``b``.

    Args:
        a: the first domain's sample, (C, H, W), normalised (background -1).
        b: the second domain's sample, the same place, (C', H, W).
        rng: the random generator (seeded per sample by the dataset, so resumed runs see the same blobs).
        count: fewest and most blobs.
        radius: smallest and largest semi-axis in pixels.
        dark: range of the foreground quantile of ``a`` a blob takes (T1: darker than white and grey matter).
        bright: range of the foreground quantile of ``b`` a blob takes (T2: bright, as oedema).
        texture: fraction of the underlying tissue's texture kept inside a blob.

    Returns:
        New ``(a, b)`` tensors (inputs unchanged); the same ones when the slice has no foreground.
    """
    xa, xb = a.detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32)
    fg = (xa[0] > BACKGROUND + 1e-3) & (xb[0] > BACKGROUND + 1e-3)
    if fg.sum() < 50:
        return a, b
    ys, xs = np.nonzero(fg)
    weight = np.zeros(fg.shape, np.float32)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        k = int(rng.integers(len(ys)))
        radii = (float(rng.uniform(*radius)), float(rng.uniform(*radius)))
        blob = _blob(fg.shape, (ys[k], xs[k]), radii, float(rng.uniform(0, np.pi)), float(rng.uniform(3, 8)))
        weight = np.maximum(weight, blob.astype(np.float32))
    weight *= fg
    q_dark, q_bright = float(rng.uniform(*dark)), float(rng.uniform(*bright))
    out = []
    for x, q in ((xa, q_dark), (xb, q_bright)):
        y = x.copy()
        y[0] = _with_blob(x[0], weight, q, fg, texture)
        if x.shape[0] >= 3:
            y[-1] = _with_blob(x[-1], weight, q, fg, texture)
            # the base is the inverted histogram match of the image: the same monotone map, applied to the new image
            y[1] = _remap(x[0], y[0], x[1], fg)
        out.append(torch.from_numpy(y).to(a.dtype))
    return out[0], out[1]
