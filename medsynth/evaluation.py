"""Image-fidelity metrics for translated volumes, the classical baseline, and :func:`evaluate` (a report).

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

Files are paired into cases and the report tables written by :mod:`medsynth.report` (``pair_cases`` and
``case_id`` are re-exported here); the figures are drawn by :mod:`medsynth.pictures`.

Example:
    >>> from medsynth.evaluation import masked_metrics
    >>> masked_metrics(pred_array, ref_array, mask)        # doctest: +SKIP
    {'psnr': 27.1, 'ssim': 0.91, 'mae': 0.031}
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from medsynth.errors import InputError
from medsynth.io import find_files, load_image
from medsynth.pictures import write_case_figure
from medsynth.report import CasePair, case_id, format_table, pair_cases, write_tables

__all__ = [
    "HU_RANGE",
    "CasePair",
    "baseline_translate",
    "case_id",
    "ct_metrics",
    "evaluate",
    "foreground_mask",
    "format_table",
    "masked_metrics",
    "normalise_in_mask",
    "pair_cases",
    "parse_label_names",
    "region_metrics",
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
    # scipy and scikit-image (~0.5 s) are imported where used, so importing the metrics stays cheap
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
    from scipy.ndimage import correlate1d  # heavy: see foreground_mask

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


def region_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray,
    regions: dict[str, np.ndarray],
    *,
    normalise: bool = True,
) -> dict[str, dict[str, float]]:
    """PSNR, SSIM and MAE inside each region (e.g. a lesion's labels) of the evaluation mask.

    The images are normalised over the whole ``mask`` (as :func:`masked_metrics` does), not over each region:
    a lesion predicted dark where the reference is bright must count as an error, which normalising inside the
    lesion alone would hide. SSIM is the whole mask's SSIM map (outside the mask 0 in both images) averaged over
    the region's voxels, so the windows see the lesion's border with its surroundings.

    Args:
        pred: predicted image.
        ref: reference image, same shape.
        mask: the evaluation mask (e.g. the brain); must not be empty.
        regions: ``{name: boolean array}``; each is intersected with ``mask``.
        normalise: as in :func:`masked_metrics`.

    Returns:
        ``{name: {"psnr", "ssim", "mae", "bias", "voxels"}}`` (``bias``: the mean of prediction - reference, on the
        normalised images: negative where a lesion comes out too dark); a region with no voxels in the mask gets
        NaN metrics.

    Example:
        >>> region_metrics(pred, ref, brain, {"oedema": labels == 1})     # doctest: +SKIP
        {'oedema': {'psnr': 14.2, 'ssim': 0.41, 'mae': 0.12, 'voxels': 36700}}
    """
    pred = _as_numpy(pred).astype(np.float32, copy=False)
    ref = _as_numpy(ref).astype(np.float32, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    mask = _check_mask(mask, ref.shape)
    if normalise:
        pred = normalise_in_mask(pred, mask)
        ref = normalise_in_mask(ref, mask)
    pred = np.where(mask, pred, np.float32(0))
    ref = np.where(mask, ref, np.float32(0))
    inside = {name: mask & (_as_numpy(region) > 0) for name, region in regions.items()}
    for name, region in inside.items():
        if region.shape != ref.shape:
            raise ValueError(f"region {name!r} shape {region.shape} differs from image shape {ref.shape}")
    out: dict[str, dict[str, float]] = {}
    if not any(r.any() for r in inside.values()):
        ssim = None
    else:
        # one SSIM map on the bounding box of the regions (plus half a window): the same values as the full map
        half = _SSIM_KERNEL // 2
        idx = np.nonzero(np.logical_or.reduce(list(inside.values())))
        box = tuple(slice(max(int(i.min()) - half, 0), int(i.max()) + half + 1) for i in idx)
        ssim = ssim_map(pred[box], ref[box])
    for name, region in inside.items():
        count = int(region.sum())
        if count == 0 or ssim is None:
            out[name] = {"psnr": math.nan, "ssim": math.nan, "mae": math.nan, "bias": math.nan, "voxels": 0}
            continue
        diff = (pred[region] - ref[region]).astype(np.float64)
        out[name] = {
            "psnr": _psnr(float(np.mean(diff**2)), 1.0),
            "ssim": float(np.mean(ssim[region[box]], dtype=np.float64)),
            "mae": float(np.mean(np.abs(diff))),
            "bias": float(np.mean(diff)),
            "voxels": count,
        }
    return out


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
    from skimage.exposure import match_histograms  # heavy: see foreground_mask

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


# ---------------------------------------------------------------------------------------------- file I/O


def _find(sources: Sequence[str | Path] | str | Path | None) -> list[Path] | None:
    """Files from paths, folders (recursive) and globs; volumes and 2D images alike."""
    if sources is None:
        return None
    return find_files(sources, what="any")


def _load(path: Path, allow_constant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(float32 array (I, J, K), voxel-to-RAS affine); InputError for anything unreadable or invalid.

    Masks and predictions may be constant (an all-ones mask, a collapsed model being scored)."""
    image = load_image(path, allow_constant=allow_constant)
    return np.asarray(image.array, dtype=np.float32), np.asarray(image.affine, dtype=float)


def parse_label_names(text: str | Path | dict[Any, str] | None) -> dict[int, str]:
    """Names of label values: ``"1=oedema,2=core"``, a JSON file (``{"1": "oedema", "2": "core"}``), a CSV file
    (rows ``value,name``; a header row is skipped), or a dict.

    Names become column prefixes (``oedema_psnr``): lower case, runs of other characters than letters, digits
    and ``_`` replaced by ``_``.

    Raises:
        InputError: a value that is not a positive integer, a name given twice, an unreadable file.
    """
    if text is None:
        return {}
    pairs: list[tuple[str, str]]
    where = "--label-names"
    if isinstance(text, dict):
        pairs = [(str(k), str(v)) for k, v in text.items()]
    elif Path(str(text)).suffix.lower() in (".json", ".csv") or Path(str(text)).is_file():
        where = str(text)
        path = Path(str(text))
        try:
            content = path.read_text()
        except OSError as exc:
            raise InputError(path, f"cannot read the label names ({exc.strerror or type(exc).__name__})") from None
        if path.suffix.lower() == ".json":
            import json

            try:
                data = json.loads(content)
            except ValueError:
                raise InputError(path, "not valid JSON (expected {\"1\": \"oedema\", ...})") from None
            if not isinstance(data, dict):
                raise InputError(path, "expected a JSON object {\"1\": \"oedema\", ...}")
            pairs = [(str(k), str(v)) for k, v in data.items()]
        else:
            import csv

            rows = [r for r in csv.reader(content.splitlines()) if r and any(c.strip() for c in r)]
            if rows and not rows[0][0].strip().isdigit():
                rows = rows[1:]  # a header row
            pairs = [(r[0], r[1] if len(r) > 1 else "") for r in rows]
    else:
        pairs = [tuple(part.split("=", 1)) if "=" in part else (part, "")  # type: ignore[misc]
                 for part in str(text).split(",") if part.strip()]
    names: dict[int, str] = {}
    for value, name in pairs:
        value = value.strip()
        if not value.isdigit() or int(value) == 0:
            raise InputError(where, f"label {value!r}: label values are positive integers (0 is background)")
        clean = re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_") or f"label{int(value)}"
        if clean in names.values():
            raise InputError(where, f"label name {clean!r} given twice")
        names[int(value)] = clean
    return names


def _label_names_beside(files: Sequence[Path]) -> dict[int, str]:
    """Label names from ``labels.json`` or ``labels.csv`` in the folder of the first label file, or from
    ``<name>.json``/``<name>.csv`` beside a single label file; ``{}`` when there are none."""
    if not files:
        return {}
    first = Path(files[0])
    stem = first.name.split(".")[0]
    for candidate in (first.with_name(f"{stem}.json"), first.with_name(f"{stem}.csv"),
                      first.parent / "labels.json", first.parent / "labels.csv"):
        if candidate.is_file():
            return parse_label_names(candidate)
    return {}


def _find_labels(sources: Sequence[str | Path] | str | Path) -> list[Path]:
    """Label files: volumes when a folder holds any (overlay PNGs beside them are left alone), else 2D images."""
    try:
        return find_files(sources, what="volume")
    except InputError:
        return find_files(sources, what="any")


def _pair_labels(preds: Sequence[Path], files: Sequence[Path]) -> list[Path]:
    """The label file of each prediction: the same rule as masks (:func:`pair_cases`): by case name, or a single
    file for a single prediction."""
    if len(files) == 1 and len(preds) == 1:
        return [Path(files[0])]
    index: dict[str, Path] = {}
    for f in files:
        key = case_id(f).casefold()
        if key in index:
            raise InputError(f, f"label map for case '{case_id(f)}' given twice (also {index[key]})")
        index[key] = Path(f)
    out = []
    for p in preds:
        match = index.get(case_id(p).casefold())
        if match is None:
            raise InputError(p, f"no label map for case '{case_id(p)}' among {len(files)} --labels file(s)")
        out.append(match)
    return out


def _load_labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An integer label map of ``shape``; InputError for a non-integer or negative one."""
    labels, _ = _load(path, allow_constant=True)
    if labels.shape != shape:
        raise InputError(path, f"shape {labels.shape} differs from reference shape {shape}")
    if np.any(labels < 0) or np.any(labels != np.round(labels)):
        raise InputError(path, "a label map holds non-negative integers (0: no label)")
    return labels.astype(np.int64)


def _label_scores(
    row: dict[str, Any],
    prefix: str,
    image: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray,
    regions: dict[str, np.ndarray],
) -> None:
    """Add ``<prefix><label>_psnr/ssim/mae/bias`` (and, for the prediction, ``<label>_voxels``) to ``row``."""
    for name, scores in region_metrics(image, ref, mask, regions).items():
        for metric in ("psnr", "ssim", "mae", "bias"):
            row[f"{prefix}{name}_{metric}"] = scores[metric]
        if not prefix:
            row[f"{name}_voxels"] = scores["voxels"]


# --------------------------------------------------------------------------------------------- evaluation

def _score_case(
    case: str,
    pred_path: Path,
    ref_path: Path,
    source_path: Path | None,
    mask_path: Path | None,
    ct: bool | None,
    fair: Any = None,
    direction: str | None = None,
    labels_path: Path | None = None,
    label_names: dict[int, str] | None = None,
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
        if fair is not None:
            # the fair baseline needs nothing a user lacks: the training histograms the model carries
            fair_pred = fair.translate(source_path, direction=direction).array
            fair_scores = masked_metrics(fair_pred, ref, mask)
            if is_ct:
                fair_scores.update(ct_metrics(fair_pred, ref, mask))
            row.update({f"fair_baseline_{k}": v for k, v in fair_scores.items()})
            row["fair_psnr_gain"] = row["psnr"] - row["fair_baseline_psnr"]
    label_map = None
    if labels_path is not None:
        # every named label gets its columns (NaN where a case lacks it), and so does any other value present
        label_map = _load_labels(labels_path, ref.shape)
        names = dict(label_names or {})
        for value in np.unique(label_map[label_map > 0]):
            names.setdefault(int(value), f"label{int(value)}")
        regions = {name: label_map == value for value, name in sorted(names.items())}
        _label_scores(row, "", pred, ref, mask, regions)
        if baseline is not None:
            _label_scores(row, "baseline_", baseline, ref, mask, regions)
        if source is not None and fair is not None:
            _label_scores(row, "fair_baseline_", fair_pred, ref, mask, regions)
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
    if labels_path is not None:
        row["labels"] = str(labels_path)
    arrays = {"pred": pred, "ref": ref, "source": source, "baseline": baseline, "mask": mask, "affine": affine,
              "fair": fair_pred if source is not None and fair is not None else None,
              "target": (direction or fair.directions[0]).split("-to-")[-1] if fair is not None else None}
    return row, arrays


# ----------------------------------------------------------------------------------------------- figures


def _domain_title(name: str) -> str:
    """``t2`` -> ``T2``, ``ct`` -> ``CT``: short domain names are acronyms."""
    return name.upper() if len(name) <= 3 else name


def _write_figure(row: dict[str, Any], arrays: dict[str, Any], path: Path) -> Any:
    """PNG with rows axial/coronal/sagittal through the mask centre and columns of images and errors: the
    prediction, and with a source the oracle baseline (matched to the reference itself) and, with a model, the
    fair one (matched to the training histograms), each beside its error."""
    mask = arrays["mask"]
    ref_n = normalise_in_mask(arrays["ref"], mask)
    pred_n = normalise_in_mask(arrays["pred"], mask)
    target = f"the real {_domain_title(arrays['target'])}" if arrays.get("target") else "the reference"
    panels: list[tuple[str, np.ndarray, str]] = []
    if arrays["source"] is not None:
        panels.append(("source", normalise_in_mask(arrays["source"], mask), "gray"))
    panels += [
        ("prediction", pred_n, "gray"),
        ("reference", ref_n, "gray"),
        ("|prediction - reference|", np.abs(pred_n - ref_n) * mask, "inferno"),
    ]
    for key, name in (("baseline", f"oracle baseline:\nmatched to {target}"),
                      ("fair", "fair baseline: matched\nto the training histograms")):
        if arrays.get(key) is not None:
            base_n = normalise_in_mask(arrays[key], mask)
            short = name.split(":")[0].split()[0]
            panels += [(name, base_n, "gray"), (f"|{short} - reference|", np.abs(base_n - ref_n) * mask, "inferno")]
    title = f"{row['case']}   PSNR {row['psnr']:.2f} dB   SSIM {row['ssim']:.3f}   MAE {row['mae']:.3f}"
    if "mae_hu" in row:
        title += f"   MAE {row['mae_hu']:.0f} HU"
    for prefix, name in (("", f"oracle baseline (matched to {target})"),
                         ("fair_", "fair baseline (matched to the training histograms)")):
        if f"{prefix}baseline_psnr" in row:
            gain = row[f"{prefix}psnr_gain"]
            title += (f"\n{name}: PSNR {row[f'{prefix}baseline_psnr']:.2f} dB   "
                      f"SSIM {row[f'{prefix}baseline_ssim']:.3f}   "
                      f"(model {abs(gain):.2f} dB {'below' if gain < 0 else 'above'})")
    return write_case_figure(path, panels, mask, arrays["affine"], title)


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
    model: str | Path | None = None,
    direction: str | None = None,
    argv: Sequence[str] | None = None,
    labels: Sequence[str] | str | None = None,
    label_names: str | Path | dict[Any, str] | None = None,
) -> list[dict[str, Any]]:
    """Score predicted images against references, case by case.

    Args:
        pred: prediction files, folders (searched recursively) or globs.
        ref: reference files, folders or globs; paired with predictions by :func:`pair_cases`.
        source: source images, to also score the classical baseline (:func:`baseline_translate`; it matches the
            reference's own histogram, an oracle no user has) and, with ``model``, the fair baseline.
        model: the model whose predictions these are (``"default"``: the packaged one): with ``source``, also score the fair baseline (invert the
            source, match its histogram to the target domain's training histogram that the model carries; see
            :func:`medsynth.inference.fair_baseline_translator`) as ``fair_baseline_*`` and ``fair_psnr_gain``.
        direction: the model's direction the predictions were made in (default: its first).
        mask: mask images; default: reference (and source) foreground, see :func:`foreground_mask`.
        out_dir: when given, write ``metrics.csv``, ``metrics.json`` and ``<case>.png`` there.
        ct: score as CT in HU too (:func:`ct_metrics`); ``None`` detects CT per case (reference values
            below -500).
        argv: the command line, recorded in ``metrics.json`` (set by ``medsynth-eval``).
        labels: label maps (e.g. lesion masks: integers, 0 no label), paired by case like ``mask``: also score
            inside each label of the evaluation mask (:func:`region_metrics`), for the prediction and the baselines.
        label_names: names of the label values (:func:`parse_label_names`: ``"1=oedema,2=core"``, a JSON or CSV
            file, a dict); default: ``labels.json``/``labels.csv`` beside the label files, else ``label1`` ...

    Returns:
        One dict per case: ``case, psnr, ssim, mae`` (+ ``mae_hu, psnr_hu, ssim_hu`` for CT,
        + ``baseline_*`` and ``psnr_gain`` with a source), ``ct, mask_voxels`` and the file paths; with ``labels``
        also ``<label>_psnr/ssim/mae``, ``baseline_<label>_*``, ``fair_baseline_<label>_*`` and ``<label>_voxels``.

    Raises:
        InputError: unreadable files, unpaired cases, shape mismatches, empty masks.
    """
    cases = pair_cases(_find(pred) or [], _find(ref) or [], _find(source), _find(mask))
    label_files: list[Path | None] = [None] * len(cases)
    names: dict[int, str] = {}
    if labels is not None:
        found = _find_labels(labels)
        label_files = list(_pair_labels([c.pred for c in cases], found))
        names = parse_label_names(label_names) if label_names is not None else _label_names_beside(found)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise InputError(out, "report folder is a file")
        out.mkdir(parents=True, exist_ok=True)
    fair = None
    if model is not None and source is not None:
        from medsynth.inference import fair_baseline_translator  # torch: only when a model is named

        fair = fair_baseline_translator(None if str(model) == "default" else model, device="cpu")
        fair._resolve_direction(direction)
    rows = []
    for (case, p, r, s, m), lab in tqdm(list(zip(cases, label_files)), desc="evaluating", unit="case",
                                        disable=None, file=sys.stderr):
        row, arrays = _score_case(case, p, r, s, m, ct, fair, direction, lab, names)
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
            "model": None if model is None else str(model),
            "direction": direction,
        }
        if labels is not None:
            arguments["labels"] = [labels] if isinstance(labels, str) else list(map(str, labels))
            arguments["label_names"] = {str(k): v for k, v in names.items()}
            arguments["label_metrics"] = (
                "<label>_psnr/ssim/mae/bias: inside the evaluation mask where the label map has that value (bias: mean "
                "of prediction - reference); both images "
                "normalised over the whole evaluation mask (not over the label), SSIM = the whole mask's SSIM map "
                "averaged over the label's voxels; baseline_<label>_* and fair_baseline_<label>_* the same for the "
                "baselines; NaN/null where a case has no voxel of the label")
        if argv is not None:
            arguments["argv"] = ["medsynth-eval", *argv]
        write_tables(rows, out, arguments)
    return rows

