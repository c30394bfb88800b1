"""Bias-field correction of MR volumes before translation (N4, as SimpleITK and ANTs implement it).

An MR volume's intensities carry a smooth multiplicative field from the receive coils and the excitation: the same
tissue is brighter near a coil than across the head. A translation that starts from a monotone intensity map (the
inverted histogram match of a residual model) carries the source's field into its output, inverted for T1 <-> T2,
where the real target has a field of its own. A model trained with ``bias_correction="n4"``
(``medsynth-train --bias-correction n4``) has every training volume corrected once, and conversion corrects each
input the same way before its slices go through the network; the model file records the choice, so conversion,
the server, the Slicer module and a MONAI bundle all apply it without being told. 2D images are left as they are.

The field is estimated by N4 (Tustison et al., IEEE TMI 29(6), 2010) on the volume shrunk to about 8 mm, inside the
foreground medsynth normalises (:func:`medsynth.intensity.foreground_threshold`) (``n4``) or only inside the voxels
of the foreground histogram's main peak (``n4-peak``, :func:`peak_mask`), interpolated back to full
resolution and divided out everywhere (the background, zero in a skull-stripped volume, stays zero). The size is set
by conversion time: on a 2-core CPU, N4 (50x50x50x50 iterations) on a 240x240x155 1 mm brain takes 0.7-1.1 s at
8 mm against 1.5-1.7 s at 6 mm, where the whole conversion takes 4-5 s; its field is within 4-10 % (1st-99th
percentile, over three of the shared volumes) of the field fitted at 4 mm (6 mm: 3-6 %). Fewer iterations cost
accuracy before time: 20x20x20x20 at 8 mm is 9-24 % off.

Why ``n4-peak``: N4's finest B-spline level (control points about 3 cm apart) can follow a 5 cm lesion, so a field
fitted over the whole foreground takes part of a large oedema's contrast into itself (on the shared patients' T2s the
field inside the oedema is 1.15-1.19 of its median elsewhere), and correcting the input, or putting the field back
on a translation, then moves the lesion towards normal tissue. Fitted on the main peak alone (most often white
matter; a lesion, CSF and fat lie outside it) the field under a lesion is what its surroundings make it: 1.01-1.04
on the same T2s, and the fit is faster (fewer voxels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BIAS_CORRECTIONS", "BIAS_OUTPUTS", "N4_ITERATIONS", "PEAK_MIN_SHARE", "PEAK_WIDTH", "bias_field",
           "correct_bias", "describe_bias_correction", "estimate_field", "peak_mask", "ras_spacing", "restore_field"]

#: the values of ``TrainConfig.bias_correction``
BIAS_CORRECTIONS: tuple[str, ...] = ("none", "n4", "n4-peak")
#: what conversion does with the input's field once the corrected volume is translated (``Translator.bias_field``)
BIAS_OUTPUTS: tuple[str, ...] = ("restore", "remove")
#: N4's fitting levels and iterations at each (ANTs' and SimpleITK's usual 50x50x50x50)
N4_ITERATIONS: tuple[int, ...] = (50, 50, 50, 50)
#: the spacing (mm) the volume is shrunk to, about, for estimating the field (smooth over centimetres)
N4_SPACING_MM = 8.0
#: ``n4-peak`` fits the field on the voxels within this factor (1 + width) of the histogram's peak, either side. Part
#: of what ``n4-peak`` means (a model records the method, not the width): another width is another method
PEAK_WIDTH = 0.15
#: below this share of the foreground, ``n4-peak``'s band is not a tissue, and the whole foreground is fitted instead
PEAK_MIN_SHARE = 0.05


def bias_field(volume: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None = None,
               iterations: Sequence[int] = N4_ITERATIONS) -> np.ndarray:
    """The multiplicative bias field of an (X, Y, Z) volume, by N4.

    Args:
        volume: the intensities (any real type; non-positive voxels inside the mask are raised to a small
            positive value for the estimate, as N4 works on their logarithm).
        spacing: voxel size in mm along X, Y, Z.
        mask: where to fit the field (default: medsynth's foreground of the volume).
        iterations: N4's iterations at each fitting level.

    Returns:
        A float32 field of the volume's shape, 1 where there is nothing to correct.
    """
    import SimpleITK as sitk
    import torch

    from medsynth.intensity import foreground_threshold

    x = np.asarray(volume, dtype=np.float32)
    if mask is None:
        mask = x > foreground_threshold(x)
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 64 or x.ndim != 3 or min(x.shape) < 2:
        return np.ones_like(x)
    floor = max(float(np.percentile(x[mask], 1)) * 1e-3, 1e-6)
    positive = np.where(mask, np.maximum(x, floor), 0).astype(np.float32)
    # SimpleITK's arrays are (Z, Y, X)
    image = sitk.GetImageFromArray(np.ascontiguousarray(positive.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    label = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0).astype(np.uint8)))
    label.CopyInformation(image)
    shrink = [max(1, min(int(round(N4_SPACING_MM / float(s))), n // 8 or 1)) for s, n in zip(spacing, x.shape)]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    small = sitk.Shrink(image, shrink)
    corrector.Execute(small, sitk.Shrink(label, shrink))
    # the field on the shrunk grid, interpolated (trilinear) onto the volume's: N4's own evaluation of its spline at
    # every voxel costs more than the fit. ITK's Shrink centres its grid: voxel j of a shrink by k lies at input
    # voxel (n - k m + k - 1) / 2 + k j, which is where interpolation by k (align_corners=False) puts it once the
    # (n - k m) voxels beyond the whole blocks are split between the two ends
    coarse = np.exp(sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(small)).transpose(2, 1, 0))
    fine = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None, None],
                                           scale_factor=tuple(float(k) for k in shrink), mode="trilinear",
                                           align_corners=False, recompute_scale_factor=False)
    pad: list[int] = []
    for n, k, m in reversed(list(zip(x.shape, shrink, coarse.shape))):
        extra = n - k * m
        pad += [extra // 2, extra - extra // 2]
    return torch.nn.functional.pad(fine, pad, mode="replicate")[0, 0].numpy()


def peak_mask(volume: np.ndarray, foreground: np.ndarray | None = None, width: float = PEAK_WIDTH) -> np.ndarray:
    """The foreground voxels of a volume's main tissue: within a factor ``1 + width`` of its histogram's peak.

    The peak is the mode of the foreground's histogram (256 bins from 0 up to its 99.5th percentile, smoothed by a
    Gaussian of 3 bins so that noise does not pick it); in a brain it is most often white matter, in T1 and T2 alike,
    and a lesion that differs from it by more than ``width`` (a T2-bright oedema, an enhancing core), CSF and fat fall
    outside. The band is found on the volume as it is, before any correction: a field that changes the intensities
    by more than about ``width`` across the head spreads the peak, and the band then holds a region of the head more
    than a tissue (``n4`` is the safer choice for such data).

    Args:
        volume: the intensities (an MR volume: N4 needs positive ones).
        foreground: where to look (default: medsynth's foreground of the volume).
        width: the band's half-width, as a factor of the peak's intensity.

    Returns:
        A boolean mask of the volume's shape. The whole foreground (``n4``'s fit) where the band means nothing: too
        few voxels for a histogram, no positive intensities, or a band that holds less than :data:`PEAK_MIN_SHARE`
        of the foreground (intensities centred on zero, which are not an MR magnitude, give a peak near zero and a
        band of almost nothing).
    """
    from medsynth.intensity import foreground_threshold

    x = np.asarray(volume, dtype=np.float32)
    fg = x > foreground_threshold(x) if foreground is None else np.asarray(foreground, dtype=bool)
    values = x[fg]
    top = float(np.percentile(values, 99.5)) if values.size >= 256 else 0.0
    if top <= 0:
        return fg
    counts, edges = np.histogram(values, bins=256, range=(0.0, top))
    peak = float(edges[int(np.argmax(_smooth_counts(counts, 3.0)))] + 0.5 * (edges[1] - edges[0]))
    band = fg & (x >= peak / (1 + width)) & (x <= peak * (1 + width))
    if band.sum() < PEAK_MIN_SHARE * values.size:
        return fg
    return band


def _smooth_counts(counts: np.ndarray, sigma: float) -> np.ndarray:
    """``counts`` smoothed by a Gaussian of ``sigma`` bins (to 4 sigma, mirrored at the ends): what
    ``scipy.ndimage.gaussian_filter1d`` gives, without importing SciPy into every conversion (0.2 s)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    padded = np.pad(counts.astype(np.float64), radius, mode="symmetric")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def estimate_field(volume: np.ndarray, spacing: Sequence[float], method: str = "n4") -> np.ndarray:
    """The multiplicative field ``method`` (``n4``, ``n4-peak``) finds in a volume; ones for ``none`` and for a
    one-slice image.

    Raises:
        ValueError: an unknown method.
    """
    x = np.asarray(volume, dtype=np.float32)
    if method not in BIAS_CORRECTIONS:
        raise ValueError(f"unknown bias correction {method!r}: use {', '.join(BIAS_CORRECTIONS)}")
    if method == "none" or x.ndim != 3 or x.shape[-1] == 1:
        return np.ones_like(x)
    return bias_field(x, spacing, mask=peak_mask(x) if method == "n4-peak" else None)


def correct_bias(volume: np.ndarray, spacing: Sequence[float], method: str = "n4") -> np.ndarray:
    """The volume divided by its bias field (``method`` ``n4`` or ``n4-peak``), or as it is (``none``, or a one-slice
    image)."""
    x = np.asarray(volume, dtype=np.float32)
    field = estimate_field(x, spacing, method)
    return x if method == "none" or x.ndim != 3 or x.shape[-1] == 1 else x / field


def describe_bias_correction(method: str, text: str, after: str = "") -> str:
    """``text`` for a bias-correcting ``method``, said of the main peak for ``n4-peak``, then ``after`` (e.g. the
    sentence's separator); nothing for ``none``. For the plan line and the bundle's description."""
    if method == "none":
        return ""
    peak = " (the field fitted on the histogram's main peak)" if method == "n4-peak" else ""
    return f"{text}{peak}{after}"


def restore_field(translation: np.ndarray, field: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """A translation of a corrected volume with the source's ``field`` put back inside ``foreground``.

    The field is scaled to median 1 over the foreground first (N4's own scale is arbitrary), so the translation
    keeps its intensity range and only its shading changes. Why at all: the receive coils' field is one for every
    image of a session, so the real target carries much of the source's field (the shared patients' T1 and T2
    fields correlate at 0.23-0.69), and a translation without it differs from the real image by all of it.
    """
    fg = np.asarray(foreground, dtype=bool)
    if not fg.any():
        return translation
    scaled = field / float(np.median(field[fg]))
    return np.where(fg, translation * scaled, translation).astype(np.float32, copy=False)


def ras_spacing(affine: np.ndarray, ornt: np.ndarray | None = None) -> np.ndarray:
    """Voxel size (mm) along each array axis of a volume with ``affine``; with ``ornt`` (nibabel's orientation, as
    :func:`medsynth.inference.to_ras` returns it), along the axes of the reoriented array."""
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    if ornt is None:
        return spacing
    out = np.empty(3)
    out[np.asarray(ornt[:, 0], dtype=int)] = spacing
    return out
