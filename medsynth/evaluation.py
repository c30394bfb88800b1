"""Image-fidelity metrics for translated volumes, the classical baseline, and evaluation reports.

Definitions (used everywhere in medsynth, including validation during training):

* **Mask.** Metrics are computed inside a mask: the one given, or where the reference (and the source,
  when given) is foreground. Foreground of an image is ``x > -500`` when the image looks like CT in HU
  (its minimum is below -500), else everything above its constant background fill (``x > 0`` for
  skull-stripped MR), else above an Otsu threshold. See :func:`foreground_mask`.
* **Normalisation.** Prediction and reference are each mapped to [0, 1] by their own 0.5 and 99.5
  percentiles inside the mask and clipped (:func:`normalise_in_mask`), so a model is not judged on the
  arbitrary intensity scale of MR. Voxels outside the mask are then set to 0 in both images, so that
  errors outside the mask do not count, not even through the SSIM window (as SynthRAD does).
* **PSNR** = ``10 log10(1 / MSE)`` inside the mask (data range 1); ``inf`` for identical images.
* **SSIM** = the 3D SSIM map (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1) averaged
  over the mask voxels.
* **MAE** = mean absolute error inside the mask, on the normalised images.
* **CT targets** additionally get the SynthRAD metrics in Hounsfield units (:func:`ct_metrics`): both
  images clipped to [-1024, 3000] HU, data range 4024, inside the body mask (``ref > -500`` HU unless a
  mask is given).
* **Baseline** (:func:`baseline_translate`): the normalised source inverted and histogram-matched to the
  reference inside the mask. Every report shows it, so a model's score reads as a margin above it.

Example:
    >>> from medsynth.evaluation import masked_metrics
    >>> masked_metrics(pred_array, ref_array, mask)        # doctest: +SKIP
    {'psnr': 27.1, 'ssim': 0.91, 'mae': 0.031}
"""

from __future__ import annotations

import argparse
import csv
import io as _stdio
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from medsynth.cli import exit_on_error
from medsynth.errors import InputError
from medsynth.files import write_atomic

__all__ = [
    "HU_RANGE",
    "CasePair",
    "baseline_translate",
    "case_id",
    "ct_metrics",
    "evaluate",
    "foreground_mask",
    "format_table",
    "main",
    "masked_metrics",
    "normalise_in_mask",
    "pair_cases",
    "ssim_map",
]

HU_RANGE: tuple[float, float] = (-1024.0, 3000.0)  # SynthRAD clip range; data range 4024 HU
CT_THRESHOLD_HU = -500.0  # below this a reference is taken to be CT in HU; above it is body

_SSIM_KERNEL = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


# --------------------------------------------------------------------------------------------- metrics


def _as_numpy(x: Any) -> np.ndarray:
    """Array from numpy, a (CUDA) torch tensor or a MONAI MetaTensor, without copying when possible."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def foreground_mask(x: np.ndarray) -> np.ndarray:
    """Voxels that are not background.

    * CT in HU (minimum below -500): the body, ``x > -500``.
    * Images with a constant background fill (skull-stripped or masked MR, the usual case): the fill is
      0 or the image minimum, whichever covers at least 10% of the voxels, and foreground is
      ``x > fill`` (so the few negative interpolation-ringing voxels of a 0-filled image stay outside).
    * Otherwise (a head with a noisy background): above the Otsu threshold, with holes filled.

    Args:
        x: image of any shape.

    Returns:
        Boolean array of the same shape.
    """
    x = _as_numpy(x)
    lowest = float(np.min(x))
    if lowest < CT_THRESHOLD_HU:
        return x > CT_THRESHOLD_HU
    for fill in (0.0, lowest):
        if np.count_nonzero(x == fill) >= 0.1 * x.size:
            return x > fill
    from scipy.ndimage import binary_fill_holes
    from skimage.filters import threshold_otsu

    return binary_fill_holes(x > threshold_otsu(x))


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = _as_numpy(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}")
    mask = mask > 0
    if not mask.any():
        raise ValueError("the mask is empty")
    return mask


def normalise_in_mask(x: np.ndarray, mask: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map ``x`` to [0, 1] by its ``low`` and ``high`` percentiles inside ``mask``, clipped.

    The whole image is mapped (not only the mask) so it can also be displayed. An image that is constant
    inside the mask maps to 0 there.

    Args:
        x: image.
        mask: boolean (or 0/1) array of the same shape; must not be empty.
        low: lower percentile, mapped to 0.
        high: upper percentile, mapped to 1.

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    x = _as_numpy(x).astype(np.float32, copy=False)
    mask = _check_mask(mask, x.shape)
    lo, hi = np.percentile(x[mask], [low, high])
    scale = float(hi - lo) if hi > lo else 1.0
    return np.clip((x - np.float32(lo)) / np.float32(scale), 0.0, 1.0).astype(np.float32, copy=False)


def ssim_map(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float = 1.0,
    kernel_size: int = _SSIM_KERNEL,
    sigma: float = _SSIM_SIGMA,
    k1: float = _SSIM_K1,
    k2: float = _SSIM_K2,
) -> np.ndarray:
    """Full-size SSIM map of two 2D or 3D images (Wang et al. 2004, Gaussian window).

    MONAI's ``monai.metrics.regression.compute_ssim_and_cs`` returns the map too, but only for the
    "valid" interior (each side shrinks by ``kernel_size // 2``), in float32 with a dense 11^3 kernel,
    which is slow on CPU for whole volumes. We need one value per voxel to average over a mask, so this
    does the same arithmetic with a separable Gaussian (three 1D passes of ``scipy.ndimage.correlate1d``,
    single-threaded, so it does not fight other processes for cores as small torch ops do) and
    replicate padding at the border. In the interior it equals MONAI's and scikit-image's maps (tested).

    Args:
        x: first image, 2D or 3D.
        y: second image, same shape.
        data_range: value range of the images (1 for [0, 1]-normalised images).
        kernel_size: Gaussian window size.
        sigma: Gaussian standard deviation.
        k1: luminance stability constant.
        k2: contrast stability constant.

    Returns:
        float32 array with the shape of ``x``.
    """
    from scipy.ndimage import correlate1d

    x = _as_numpy(x)
    y = _as_numpy(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got shape {x.shape}")
    # Scaled to [0, 1] so float32 keeps its precision in the variance terms (SSIM does not change when
    # the images and data_range scale together).
    x = x.astype(np.float32) / np.float32(data_range)
    y = y.astype(np.float32) / np.float32(data_range)
    taps = np.arange(kernel_size) - kernel_size // 2
    window = np.exp(-(taps**2) / (2 * sigma**2))
    window /= window.sum()

    def blur(a: np.ndarray) -> np.ndarray:
        for axis in range(a.ndim):
            if a.shape[axis] > 1:  # a single slice: the window's weights sum to 1 along that axis
                a = correlate1d(a, window, axis=axis, mode="nearest")
        return a

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1 = np.float32(k1**2)
    c2 = np.float32(k2**2)
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim.astype(np.float32, copy=False)


def _mean_ssim_in_mask(x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """SSIM map averaged over the mask, computed on the mask's bounding box plus half a window only.

    Every window centred in the mask lies inside that box (or meets the volume border, padded the same
    way as the full volume), so the result equals the full-volume map's mean; it is just faster.
    """
    half = _SSIM_KERNEL // 2
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - half, 0), int(i.max()) + half + 1) for i in idx)
    ssim = ssim_map(x[box], y[box], data_range=data_range)
    return float(np.mean(ssim[mask[box]], dtype=np.float64))


def _psnr(mse: float, data_range: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def masked_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    normalise: bool = True,
) -> dict[str, float]:
    """PSNR, SSIM and MAE of ``pred`` against ``ref`` inside ``mask``.

    Args:
        pred: predicted image (2D or 3D).
        ref: reference image, same shape.
        mask: where to measure. ``None``: where the reference is foreground (:func:`foreground_mask`:
            above its background fill, usually ``ref > 0``; ``ref > -500`` for CT in HU). The prediction
            is never used to make the mask. Pass an explicit mask to also require the source's foreground.
        normalise: map each image to [0, 1] by its 0.5/99.5 percentiles inside the mask first. With
            ``False`` the images are used as given and must already be on a [0, 1] scale (data range 1).

    Returns:
        ``{"psnr": dB (inf if identical), "ssim": mean of the SSIM map over the mask, "mae": ...}``.

    Raises:
        ValueError: shapes differ or the mask is empty.
    """
    pred = _as_numpy(pred).astype(np.float32, copy=False)
    ref = _as_numpy(ref).astype(np.float32, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    mask = _check_mask(foreground_mask(ref) if mask is None else mask, ref.shape)
    if normalise:
        pred = normalise_in_mask(pred, mask)
        ref = normalise_in_mask(ref, mask)
    # Same value outside the mask in both images: outside errors cannot leak into SSIM windows.
    pred = np.where(mask, pred, np.float32(0))
    ref = np.where(mask, ref, np.float32(0))
    diff = (pred[mask] - ref[mask]).astype(np.float64)
    return {
        "psnr": _psnr(float(np.mean(diff**2)), 1.0),
        "ssim": _mean_ssim_in_mask(pred, ref, mask, 1.0),
        "mae": float(np.mean(np.abs(diff))),
    }


def ct_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """SynthRAD image metrics for a CT target in Hounsfield units.

    Both images are clipped to [-1024, 3000] HU (data range 4024). MAE and PSNR are taken inside the
    mask; for SSIM, voxels outside the mask are set to -1024 HU in both images (as SynthRAD does) and the
    SSIM map is averaged over the mask. Note: SynthRAD's reference code uses scikit-image's default
    7-voxel uniform window; medsynth uses the same Gaussian window (11, sigma 1.5) for every SSIM.

    Args:
        pred_hu: predicted CT in HU.
        ref_hu: reference CT in HU, same shape.
        mask: body mask; ``None`` -> ``ref_hu > -500``.

    Returns:
        ``{"mae_hu": HU, "psnr_hu": dB, "ssim_hu": ...}``.
    """
    lo, hi = HU_RANGE
    pred = np.clip(_as_numpy(pred_hu).astype(np.float32, copy=False), lo, hi)
    ref = np.clip(_as_numpy(ref_hu).astype(np.float32, copy=False), lo, hi)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    mask = _check_mask(ref > CT_THRESHOLD_HU if mask is None else mask, ref.shape)
    data_range = hi - lo
    diff = (pred[mask] - ref[mask]).astype(np.float64)
    pred_s = np.where(mask, pred, np.float32(lo)) - np.float32(lo)
    ref_s = np.where(mask, ref, np.float32(lo)) - np.float32(lo)
    return {
        "mae_hu": float(np.mean(np.abs(diff))),
        "psnr_hu": _psnr(float(np.mean(diff**2)), data_range),
        "ssim_hu": _mean_ssim_in_mask(pred_s, ref_s, mask, data_range),
    }


def baseline_translate(source: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The classical baseline: invert the normalised source, then match its histogram to the reference.

    Inside the mask, the source is normalised by its 0.5/99.5 percentiles (unclipped), inverted
    (``1 - s``, since T1 and T2 contrasts are roughly opposite) and histogram-matched to the reference's
    voxels inside the mask (``skimage.exposure.match_histograms``). Outside the mask the result is the
    reference's minimum (its background value).

    Args:
        source: source image (e.g. T1).
        ref: reference image of the target contrast (e.g. T2), same shape; only its histogram inside the
            mask and its minimum are used.
        mask: where to translate; must not be empty.

    Returns:
        float32 array in the reference's intensity units.
    """
    from skimage.exposure import match_histograms

    source = _as_numpy(source)
    ref = _as_numpy(ref).astype(np.float32, copy=False)
    if source.shape != ref.shape:
        raise ValueError(f"source shape {source.shape} differs from reference shape {ref.shape}")
    mask = _check_mask(mask, ref.shape)
    # Normalise by the 0.5/99.5 percentiles but do not clip: matching is by rank, and clipping would
    # tie the extreme 1% of voxels to one value (costing ~10 dB even on a perfectly inverted image).
    lo, hi = np.percentile(source[mask].astype(np.float64), [0.5, 99.5])
    inverted = 1.0 - (source.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo if hi > lo else 1.0)
    out = np.full(ref.shape, np.min(ref), dtype=np.float32)
    out[mask] = match_histograms(inverted[mask], ref[mask])
    return out


# ------------------------------------------------------------------------------------------- file pairing

# Words that name a contrast, a role or a direction rather than a case.
_ROLE_WORDS = (
    "t1", "t2", "t1w", "t2w", "t1c", "t1ce", "t1gd", "t1n", "t2f", "flair", "pd", "pdw", "ct", "cbct", "sct",
    "mr", "mri", "source", "src", "input", "in", "pred", "prediction", "translated", "translation", "synth",
    "synthetic", "fake", "output", "out", "ref", "reference", "target", "gt", "real", "mask", "brainmask",
    "body", "image", "img", "vol", "volume",
)  # fmt: skip
_DIRECTION = r"[a-z0-9]+[-_]to[-_][a-z0-9]+"
_TRAILING_ROLE = re.compile(rf"[-_.](?:{_DIRECTION}|{'|'.join(_ROLE_WORDS)})$", re.IGNORECASE)
_WHOLE_ROLE = re.compile(rf"^(?:{_DIRECTION}|{'|'.join(_ROLE_WORDS)})$", re.IGNORECASE)


def case_id(path: str | Path) -> str:
    """The case a file belongs to, from its name.

    Rule: drop the image extension; then repeatedly drop a trailing ``_word``, ``-word`` or ``.word``
    where *word* names a contrast, role or direction (t1, t2, t1w, flair, ct, pred, ref, mask,
    t1-to-t2, ...). What remains is the case; if nothing remains (the file is just ``t2.nii.gz``), the
    case is the name of the folder holding it. So ``BraTS-001_t2.nii.gz``, ``BraTS-001_t1-to-t2.nii.gz``
    and ``BraTS-001/t2.nii.gz`` all belong to case ``BraTS-001``. Cases are compared ignoring upper/lower
    case.

    Args:
        path: image file.

    Returns:
        The case name.
    """
    from medsynth.io import stem_of

    path = Path(path)
    name = stem_of(path)
    if _WHOLE_ROLE.match(name):
        return path.parent.name or name
    while True:
        shorter = _TRAILING_ROLE.sub("", name)
        if shorter == name or not shorter:
            break
        name = shorter
    return name


def _index(files: Sequence[Path], what: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for f in files:
        key = case_id(f).casefold()
        if key in index:
            raise InputError(
                f,
                f"{what} for case '{case_id(f)}' given twice (also {index[key]}); "
                "pass one file per case, e.g. a glob like 'data/*/t2.nii.gz'",
            )
        index[key] = f
    return index


class CasePair(NamedTuple):
    """The files of one case; a plain tuple ``(case, pred, ref, source, mask)`` too."""

    case: str
    pred: Path
    ref: Path
    source: Path | None
    mask: Path | None


def pair_cases(
    pred_files: Sequence[str | Path],
    ref_files: Sequence[str | Path],
    source_files: Sequence[str | Path] | None = None,
    mask_files: Sequence[str | Path] | None = None,
) -> list[CasePair]:
    """Pair predictions with references (and sources, masks) by case name (:func:`case_id`).

    A single prediction with a single reference is paired whatever their names (same for a single
    source or mask). Otherwise every prediction needs exactly one reference, source (when sources are
    given) and mask (when masks are given) of its case; references without a prediction are ignored.

    Args:
        pred_files: predicted images.
        ref_files: reference images.
        source_files: source images the predictions were translated from, or None.
        mask_files: mask images, or None.

    Returns:
        ``[CasePair(case, pred, ref, source or None, mask or None), ...]`` in the order of ``pred_files``.

    Raises:
        InputError: no files, a case given twice, or a prediction without its reference/source/mask.
    """
    preds = [Path(p) for p in pred_files]
    if not preds:
        raise InputError("--pred", "no prediction files")
    refs = [Path(p) for p in ref_files]
    if not refs:
        raise InputError("--ref", "no reference files")
    _index(preds, "prediction")  # duplicates among predictions are an error too

    def lookup(files: Sequence[str | Path] | None, what: str) -> list[Path | None]:
        if files is None:
            return [None] * len(preds)
        paths = [Path(f) for f in files]
        if not paths:
            raise InputError(f"--{what}", f"no {what} files")
        if len(paths) == 1 and len(preds) == 1:
            return [paths[0]]
        index = _index(paths, what)
        found: list[Path | None] = []
        for p in preds:
            match = index.get(case_id(p).casefold())
            if match is None:
                raise InputError(
                    p, f"no {what} file for case '{case_id(p)}' among {len(paths)} {what} file(s)"
                )
            found.append(match)
        return found

    refs_found = lookup(refs, "reference")
    sources = lookup(source_files, "source")
    masks = lookup(mask_files, "mask")
    return [
        CasePair(case_id(p), p, r, s, m)  # type: ignore[arg-type]
        for p, r, s, m in zip(preds, refs_found, sources, masks)
    ]


# ---------------------------------------------------------------------------------------------- file I/O


def _find(sources: Sequence[str | Path] | str | Path | None) -> list[Path] | None:
    """Files from paths, folders (recursive) and globs; volumes and 2D images alike."""
    if sources is None:
        return None
    from medsynth.io import find_files

    return find_files(sources, what="any")


def _load(path: Path, allow_constant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(float32 array (I, J, K), voxel-to-RAS affine); InputError for anything unreadable or invalid.

    Masks and predictions may be constant (an all-ones mask, a collapsed model being scored)."""
    from medsynth.io import load_image

    image = load_image(path, allow_constant=allow_constant)
    return np.asarray(image.array, dtype=np.float32), np.asarray(image.affine, dtype=float)


# --------------------------------------------------------------------------------------------- evaluation

def _score_case(
    case: str,
    pred_path: Path,
    ref_path: Path,
    source_path: Path | None,
    mask_path: Path | None,
    ct: bool | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics row for one case, and the arrays the figure needs."""
    pred, _ = _load(pred_path, allow_constant=True)
    ref, affine = _load(ref_path)
    if pred.shape != ref.shape:
        raise InputError(pred_path, f"shape {pred.shape} differs from reference {ref_path} shape {ref.shape}")
    source = None
    if source_path is not None:
        source, _ = _load(source_path)
        if source.shape != ref.shape:
            raise InputError(
                source_path, f"shape {source.shape} differs from reference {ref_path} shape {ref.shape}"
            )
    is_ct = bool(np.min(ref) < CT_THRESHOLD_HU) if ct is None else bool(ct)
    if mask_path is not None:
        mask_arr, _ = _load(mask_path, allow_constant=True)
        if mask_arr.shape != ref.shape:
            raise InputError(mask_path, f"shape {mask_arr.shape} differs from reference shape {ref.shape}")
        mask = mask_arr > 0
    else:
        mask = ref > CT_THRESHOLD_HU if is_ct else foreground_mask(ref)
        if source is not None:
            mask &= foreground_mask(source)
    if not mask.any():
        raise InputError(mask_path or ref_path, "the evaluation mask is empty (no foreground voxels)")

    row: dict[str, Any] = {"case": case, **masked_metrics(pred, ref, mask)}
    if is_ct:
        row.update(ct_metrics(pred, ref, mask))
    baseline = None
    if source is not None:
        baseline = baseline_translate(source, ref, mask)
        base = masked_metrics(baseline, ref, mask)
        if is_ct:
            base.update(ct_metrics(baseline, ref, mask))
        row.update({f"baseline_{k}": v for k, v in base.items()})
        row["psnr_gain"] = row["psnr"] - row["baseline_psnr"]
    row.update(
        {
            "ct": is_ct,
            "mask_voxels": int(mask.sum()),
            "pred": str(pred_path),
            "ref": str(ref_path),
            "source": None if source_path is None else str(source_path),
            "mask": None if mask_path is None else str(mask_path),
        }
    )
    arrays = {"pred": pred, "ref": ref, "source": source, "baseline": baseline, "mask": mask, "affine": affine}
    return row, arrays


def _numeric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in cols and k not in ("ct", "mask_voxels") and isinstance(v, float):
                cols.append(k)
    return cols


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    means: dict[str, float] = {}
    for col in _numeric_columns(rows):
        vals = [r[col] for r in rows if isinstance(r.get(col), float) and not math.isnan(r[col])]
        with np.errstate(invalid="ignore"):  # inf and -inf (PSNR gains of perfect cases) mean nan
            means[col] = float(np.mean(vals)) if vals else math.nan
    return means


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The metrics table as printed by ``medsynth-eval``: one line per case and a mean line."""
    cols = _numeric_columns(rows)
    means = _means(rows)
    width = max([4, *(len(str(r["case"])) for r in rows)])
    widths = {c: max(len(c), 8) + 2 for c in cols}
    header = f"{'case':<{width}}" + "".join(f"{c:>{widths[c]}}" for c in cols)
    lines = [header, "-" * len(header)]

    def fmt(col: str, v: float | None) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return f"{'-':>{widths[col]}}"
        digits = 4 if col.endswith(("ssim", "mae", "ssim_hu")) else 2
        return f"{v:>{widths[col]}.{digits}f}"

    for r in rows:
        lines.append(f"{str(r['case']):<{width}}" + "".join(fmt(c, r.get(c)) for c in cols))
    lines.append("-" * len(header))
    lines.append(f"{'mean':<{width}}" + "".join(fmt(c, means[c]) for c in cols))
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """JSON has no inf/nan: write them as null (PSNR of identical images is infinite)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_tables(rows: Sequence[dict[str, Any]], out_dir: Path, arguments: dict[str, Any]) -> None:
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    writer.writerow({"case": "mean", **_means(rows)})
    write_atomic(out_dir / "metrics.csv", buf.getvalue().encode())

    report = {
        "arguments": arguments,
        "definitions": {
            "mask": "given mask, else reference foreground (and source foreground when a source is given); "
            "CT: reference > -500 HU",
            "psnr": "10*log10(1/MSE) in the mask after normalising each image to [0,1] by its 0.5/99.5 "
            "percentiles in the mask; null = infinite (identical images)",
            "ssim": "3D SSIM map (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1) "
            "averaged over the mask, normalised images",
            "mae": "mean absolute error in the mask, normalised images",
            "ct": "mae_hu/psnr_hu/ssim_hu: SynthRAD, clip to [-1024, 3000] HU, data range 4024",
            "baseline": "normalised source inverted and histogram-matched to the reference in the mask",
        },
        "cases": list(rows),
        "mean": _means(rows),
    }
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False)
    write_atomic(out_dir / "metrics.json", (text + "\n").encode())


# ----------------------------------------------------------------------------------------------- figures


def _to_ras(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array reoriented to RAS (for display only) and its voxel sizes in that order."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.where(spacing > 0, spacing, 1.0)
    ras = nio.apply_orientation(arr, ornt)
    return ras, spacing[np.argsort(ornt[:, 0].astype(int))]


def _slices(vol: np.ndarray, centre: Sequence[int]) -> list[tuple[str, np.ndarray, int, int, str]]:
    """Views of a RAS volume through ``centre``: (name, 2D slice, horizontal axis, vertical axis, origin).

    Volumes give axial, coronal and sagittal slices in radiological convention (the patient's right on
    the viewer's left); a 2D image (I, J, 1) gives itself, rows downwards, as it is stored.
    """
    if vol.shape[2] == 1:
        return [("image", vol[:, :, 0], 1, 0, "upper")]
    i, j, k = centre
    return [
        ("axial", vol[::-1, :, k].T, 0, 1, "lower"),
        ("coronal", vol[::-1, j, :].T, 0, 2, "lower"),
        ("sagittal", vol[i, ::-1, :].T, 1, 2, "lower"),
    ]


def _write_figure(row: dict[str, Any], arrays: dict[str, Any], path: Path) -> None:
    """PNG with rows axial/coronal/sagittal through the mask centre and columns of images and errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = arrays["mask"]
    if mask.ndim == 2:
        arrays = {k: (v[..., None] if isinstance(v, np.ndarray) and v.ndim == 2 else v) for k, v in arrays.items()}
        mask = arrays["mask"]
    affine = arrays["affine"]
    ref_n = normalise_in_mask(arrays["ref"], mask)
    pred_n = normalise_in_mask(arrays["pred"], mask)
    panels: list[tuple[str, np.ndarray, str]] = []
    if arrays["source"] is not None:
        panels.append(("source", normalise_in_mask(arrays["source"], mask), "gray"))
    panels += [
        ("prediction", pred_n, "gray"),
        ("reference", ref_n, "gray"),
        ("|prediction - reference|", np.abs(pred_n - ref_n) * mask, "inferno"),
    ]
    if arrays["baseline"] is not None:
        base_n = normalise_in_mask(arrays["baseline"], mask)
        panels += [("baseline", base_n, "gray"), ("|baseline - reference|", np.abs(base_n - ref_n) * mask, "inferno")]

    mask_ras, spacing = _to_ras(mask.astype(np.float32), affine)
    centre = [int(round(c)) for c in np.argwhere(mask_ras > 0).mean(axis=0)]
    views = [_slices(_to_ras(p[1], affine)[0], centre) for p in panels]
    n_rows, n_cols = len(views[0]), len(panels)
    # Row heights follow each view's physical height/width, so no row is mostly white space.
    heights = [
        float(np.clip(sl.shape[0] * spacing[v] / (sl.shape[1] * spacing[h]), 0.3, 3.0))
        for _, sl, h, v, _ in views[0]
    ]
    fig = plt.figure(figsize=(2.3 * n_cols + 0.7, 2.3 * sum(heights) + 0.3 * n_rows + 0.9))
    # A narrow last column holds one colour bar: every error panel uses the same 0-0.5 scale.
    grid = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[1.0] * n_cols + [0.05], height_ratios=heights)
    error_image = None
    for c, ((title, _, cmap), panel_views) in enumerate(zip(panels, views)):
        for r, (view, sl, h_axis, v_axis, origin) in enumerate(panel_views):
            ax = fig.add_subplot(grid[r, c])
            vmax = 0.5 if cmap == "inferno" else 1.0
            im = ax.imshow(sl, cmap=cmap, vmin=0.0, vmax=vmax, origin=origin, interpolation="nearest",
                           aspect=float(spacing[v_axis] / spacing[h_axis]))  # fmt: skip
            if cmap == "inferno":
                error_image = im
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(view, fontsize=9)
    if error_image is not None:
        cbar = fig.colorbar(error_image, cax=fig.add_subplot(grid[:, -1]))
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("absolute error (normalised)", fontsize=8)
    title = f"{row['case']}   PSNR {row['psnr']:.2f} dB   SSIM {row['ssim']:.3f}   MAE {row['mae']:.3f}"
    if "mae_hu" in row:
        title += f"   MAE {row['mae_hu']:.0f} HU"
    if "baseline_psnr" in row:
        title += f"\nbaseline: PSNR {row['baseline_psnr']:.2f} dB   SSIM {row['baseline_ssim']:.3f}"
        gain = row["psnr_gain"]
        title += f"   (model {abs(gain):.2f} dB {'below' if gain < 0 else 'above'} baseline)"
    fig.suptitle(title, fontsize=10)
    view = "as stored" if mask.shape[2] == 1 else "radiological view"
    fig.text(0.5, 0.005, f"intensities normalised to [0, 1] in the mask; errors on 0-0.5; {view}",
             ha="center", fontsize=7, color="0.4")  # fmt: skip
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def _safe_name(case: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", case) or "case"


def evaluate(
    pred: Sequence[str] | str,
    ref: Sequence[str] | str,
    source: Sequence[str] | str | None = None,
    mask: Sequence[str] | str | None = None,
    out_dir: str | Path | None = None,
    ct: bool | None = None,
    *,
    argv: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score predicted images against references, case by case.

    Args:
        pred: prediction files, folders (searched recursively) or globs.
        ref: reference files, folders or globs; paired with predictions by :func:`pair_cases`.
        source: source images, to also score the classical baseline (:func:`baseline_translate`).
        mask: mask images; default: reference (and source) foreground, see :func:`foreground_mask`.
        out_dir: when given, write ``metrics.csv``, ``metrics.json`` and ``<case>.png`` there.
        ct: score as CT in HU too (:func:`ct_metrics`); ``None`` detects CT per case (reference values
            below -500).
        argv: the command line, recorded in ``metrics.json`` (set by ``medsynth-eval``).

    Returns:
        One dict per case: ``case, psnr, ssim, mae`` (+ ``mae_hu, psnr_hu, ssim_hu`` for CT,
        + ``baseline_*`` and ``psnr_gain`` with a source), ``ct, mask_voxels`` and the file paths.

    Raises:
        InputError: unreadable files, unpaired cases, shape mismatches, empty masks.
    """
    from tqdm import tqdm

    cases = pair_cases(_find(pred) or [], _find(ref) or [], _find(source), _find(mask))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise InputError(out, "report folder is a file")
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, p, r, s, m in tqdm(cases, desc="evaluating", unit="case", disable=None, file=sys.stderr):
        row, arrays = _score_case(case, p, r, s, m, ct)
        if out is not None:
            _write_figure(row, arrays, out / f"{_safe_name(case)}.png")
        rows.append(row)
    if out is not None:
        arguments = {
            "pred": [pred] if isinstance(pred, str) else list(map(str, pred)),
            "ref": [ref] if isinstance(ref, str) else list(map(str, ref)),
            "source": None if source is None else ([source] if isinstance(source, str) else list(map(str, source))),
            "mask": None if mask is None else ([mask] if isinstance(mask, str) else list(map(str, mask))),
            "out": str(out),
            "ct": ct,
        }
        if argv is not None:
            arguments["argv"] = ["medsynth-eval", *argv]
        _write_tables(rows, out, arguments)
    return rows


# -------------------------------------------------------------------------------------------------- CLI


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-eval``: print a metrics table, and write a report folder with ``--out``."""
    parser = argparse.ArgumentParser(
        prog="medsynth-eval",
        description="Score translated images against references: PSNR, SSIM and MAE inside a mask "
        "(SynthRAD HU metrics too for CT), and the classical baseline when --source is given. "
        "Files are paired by case name: 'BraTS-001_t2.nii.gz' and 'BraTS-001/t2.nii.gz' are case BraTS-001.",
    )
    parser.add_argument("--pred", nargs="+", required=True, metavar="SRC", help="predictions: files, folders, globs")
    parser.add_argument("--ref", nargs="+", required=True, metavar="SRC", help="references of the target contrast")
    parser.add_argument("--source", nargs="+", metavar="SRC", help="source images: also score the baseline")
    parser.add_argument("--mask", nargs="+", metavar="SRC", help="masks (default: reference & source foreground)")
    parser.add_argument("--out", metavar="REPORT_DIR", help="write metrics.csv, metrics.json and a PNG per case")
    parser.add_argument(
        "--ct",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="target is CT in HU: add SynthRAD HU metrics (default: detect, reference below -500)",
    )
    args = parser.parse_args(argv)
    rows = evaluate(
        args.pred,
        args.ref,
        source=args.source,
        mask=args.mask,
        out_dir=args.out,
        ct=args.ct,
        argv=list(sys.argv[1:] if argv is None else argv),
    )
    print(format_table(rows))
    if args.out:
        print(f"report: {Path(args.out) / 'metrics.csv'}, metrics.json and {len(rows)} PNG(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
