"""Lesion-aware augmentation: synthetic tumour-like lesions pasted into paired training slices.

Two training patients show the network one or two real lesions; a model trained on them renders an unseen
patient's oedema too dark in T2 (``scripts/results/study_lesion.md``). :func:`paste_lesions` adds, to both images
of a registered pair at the same place, a few blobs with smooth borders that look as a tumour's oedema does:
only moderately dark in the first domain (T1: about grey matter's level, brighter than CSF) and nearly as bright
as CSF in the second (T2). No monotone map of T1 intensities can produce that, which is the point: the pair
teaches the correction network what the base cannot know. With probability ``core`` the largest blob also gets a
core, bright in T1 (an enhancing tumour) and intermediate grey in T2. Each blob keeps a damped copy of the
tissue's texture. Levels are drawn as quantiles of each slice's own foreground, so the blobs need no knowledge of a
scanner's units.

Where: ``site="anywhere"`` centres blobs on any foreground pixel (cortex and ventricles too). ``site="white"`` puts
them where vasogenic oedema lies: centred in white matter (the brightest part of the first domain's foreground, a
T1's white matter) and spreading along it, the weight shaped by a smoothed white-matter mask, so the cortex beside
it keeps its grey matter. The network then sees grey-matter-level T1 inside white matter as what turns bright, not
grey-matter-level T1 in general (which would brighten the cortex of every patient).

Channel layout (see :meth:`medsynth.training.DomainData.add_base`): ``[image, base, (context bases...),
target]`` for residual generators, ``[image]`` otherwise. The image and the target channel get the
lesion; the base (the inverted histogram match of the image, a monotone decreasing map of it) is recomputed from
the new image through that same map, read off the slice itself. Context channels (2.5D) are left as they are.

Example:
    >>> a, b = paste_lesions(a, b, np.random.default_rng(0))     # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from medsynth.config import LESION_SITES as SITES

__all__ = ["SITES", "paste_lesions"]

BACKGROUND = -1.0  # the normalised background level
#: ``site="white"``: the first domain's foreground above this quantile is white matter (in a T1 about the brightest
#: half of the brain; grey matter and CSF are darker)
WHITE_QUANTILE = 0.55


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


def _inside(x: np.ndarray, weight: np.ndarray, quantile: float, fg: np.ndarray, texture: float) -> np.ndarray:
    """What a blob puts in place of ``x``: its own foreground ``quantile``, plus ``texture`` x the tissue's local
    deviations from its mean under the blob."""
    level = float(np.quantile(x[fg], quantile))
    inside = weight > 0.5
    mean = float(x[inside].mean()) if inside.any() else level
    return level + texture * (x - mean)


def paste_lesions(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator, count: tuple[int, int] = (1, 3),
                  radius: tuple[float, float] = (4.0, 16.0), dark: tuple[float, float] = (0.12, 0.40),
                  bright: tuple[float, float] = (0.85, 0.98), texture: float = 0.3,
                  softness: tuple[float, float] = (3.0, 8.0), core: float = 0.0,
                  core_a: tuple[float, float] = (0.85, 0.99), core_b: tuple[float, float] = (0.35, 0.65),
                  site: str = "anywhere", return_weight: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste ``count`` oedema-like blobs (and perhaps a core) into a registered pair of training slices.

    Args:
        a: the first domain's sample (T1-like), (C, H, W), normalised (background -1).
        b: the second domain's sample (T2-like), the same place, (C', H, W).
        rng: the random generator (seeded per sample by the dataset, so resumed runs see the same lesions).
        count: fewest and most blobs.
        radius: smallest and largest semi-axis in pixels.
        dark: range of the foreground quantile of ``a`` an oedema blob takes (the default, 0.12-0.40, is about grey
            matter's level in T1: darker than white matter, brighter than CSF).
        bright: range of the foreground quantile of ``b`` an oedema blob takes (nearly CSF-bright in T2).
        texture: fraction of the underlying tissue's texture kept inside a blob.
        softness: range of the border's steepness (the weight falls from 1 to 0 over about 1 / softness of the
            radius).
        core: probability that the largest blob gets a core of 0.3-0.6 its size.
        core_a: range of the foreground quantile of ``a`` the core takes (bright in T1, as an enhancing tumour).
        core_b: range of the foreground quantile of ``b`` the core takes (intermediate grey in T2).
        site: ``"anywhere"`` (centres on any foreground pixel) or ``"white"`` (centres in the white matter of ``a``,
            the oedema shaped by it; anywhere when the slice has too little white matter).
        return_weight: also return where the lesion is, (1, H, W) in [0, 1] (the blend weight of the oedema and
            its core; zeros when nothing was pasted), for a loss that weighs the lesion.

    Returns:
        New ``(a, b)`` tensors (inputs unchanged); the same ones when the slice has no foreground. With
        ``return_weight``, ``(a, b, weight)``.

    Raises:
        ValueError: an unknown ``site``.
    """
    if site not in SITES:
        raise ValueError(f"unknown lesion site {site!r}: use one of {', '.join(SITES)}")
    xa, xb = a.detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32)
    fg = (xa[0] > BACKGROUND + 1e-3) & (xb[0] > BACKGROUND + 1e-3)
    if fg.sum() < 50:
        return (a, b, torch.zeros((1, *fg.shape))) if return_weight else (a, b)
    centres, follow = fg, None
    if site == "white":
        white = fg & (xa[0] > np.quantile(xa[0][fg], WHITE_QUANTILE))
        if white.sum() >= 25:
            from scipy.ndimage import gaussian_filter

            centres = white
            # soft: the oedema fades at the grey-white border instead of stopping at a pixel-sharp edge
            follow = np.clip(gaussian_filter(white.astype(np.float32), 1.5) * 1.5, 0.0, 1.0)
    ys, xs = np.nonzero(centres)
    weight = np.zeros(fg.shape, np.float32)
    largest: tuple[float, tuple[int, int], tuple[float, float], float] | None = None
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        k = int(rng.integers(len(ys)))
        radii = (float(rng.uniform(*radius)), float(rng.uniform(*radius)))
        angle = float(rng.uniform(0, np.pi))
        blob = _blob(fg.shape, (ys[k], xs[k]), radii, angle, float(rng.uniform(*softness)))
        weight = np.maximum(weight, blob.astype(np.float32))
        if largest is None or radii[0] * radii[1] > largest[0]:
            largest = (radii[0] * radii[1], (int(ys[k]), int(xs[k])), radii, angle)
    weight *= fg
    if follow is not None:
        weight *= follow
    levels = [(weight, float(rng.uniform(*dark)), float(rng.uniform(*bright)))]
    if core > 0 and largest is not None and rng.random() < core:
        scale = float(rng.uniform(0.3, 0.6))
        inner = _blob(fg.shape, largest[1], (largest[2][0] * scale, largest[2][1] * scale), largest[3],
                      float(rng.uniform(*softness))).astype(np.float32) * fg
        levels.append((inner, float(rng.uniform(*core_a)), float(rng.uniform(*core_b))))
    out = []
    for i, x in enumerate((xa, xb)):
        y = x.copy()
        for w, qa, qb in levels:
            # levels and texture are read off the clean slice, so a core does not inherit the oedema's level
            y[0] = (1.0 - w) * y[0] + w * _inside(x[0], w, qa if i == 0 else qb, fg, texture)
            if x.shape[0] >= 3:
                y[-1] = (1.0 - w) * y[-1] + w * _inside(x[-1], w, qa if i == 0 else qb, fg, texture)
        if x.shape[0] >= 3:
            # the base is the inverted histogram match of the image: the same monotone map, applied to the new image
            y[1] = _remap(x[0], y[0], x[1], fg)
        out.append(torch.from_numpy(y).to(a.dtype))
    if return_weight:
        where = np.maximum.reduce([w for w, _, _ in levels])
        return out[0], out[1], torch.from_numpy(where[None].astype(np.float32))
    return out[0], out[1]
