"""Classical X-ray enhancement: histogram equalisation, CLAHE, denoising, sharpening and gamma.

Each step is a scikit-image or SimpleITK filter; this module only chains them, in the order given, on
floats. The image is normalised to [0, 1] by its value range (by default its own min/max), every step works
and stays in [0, 1], and the result is mapped back to the same range. Nothing is quantised to 8 bits on the
way, so a 16-bit input keeps its depth (the bins used by the histogram steps grow with the depth).

Example:
    >>> config = EnhanceConfig(steps="clahe,denoise,sharpen")           # doctest: +SKIP
    >>> out = enhance(xray, config, value_range=(0, 65535))              # doctest: +SKIP
    >>> image_stats(out, value_range=(0, 65535))["edge_strength"]        # doctest: +SKIP

The same chain is a MONAI transform (:class:`Enhance`, :class:`Enhanced`) for training pipelines, a file
function (:func:`enhance_file`), and a command, ``medsynth-enhance INPUT OUTPUT --steps clahe,denoise,sharpen``
(:mod:`medsynth.cli.enhance`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from medsynth.errors import InputError
from medsynth.image2d import write_image2d
from medsynth.io import load_image, save_like, stem_of, suffix_of
from medsynth.pictures import write_before_after

# scikit-image, SciPy, SimpleITK and MONAI are imported inside the steps that use them: the command line imports
# this module for its parsers (STEPS and the method names), and --help must stay instant.

__all__ = ["STEPS", "EnhanceConfig", "Enhance", "Enhanced", "enhance", "enhance_file", "image_stats", "noise_sigma",
           "parse_steps", "preview_path"]

STEPS: tuple[str, ...] = ("histeq", "clahe", "denoise", "sharpen", "gamma")
DENOISE_METHODS: tuple[str, ...] = ("nlmeans", "bilateral", "curvature")
SHARPEN_METHODS: tuple[str, ...] = ("unsharp", "laplacian")

# Bins of the histogram steps: 8-bit data gets one bin per grey level; deeper data more bins, so that
# equalisation does not merge levels 8-bit would merge. CLAHE uses fewer (its tiles hold few pixels).
_HISTEQ_BINS = {8: 256, 16: 65536}
_CLAHE_BINS = {8: 256, 16: 1024}


@dataclass
class EnhanceConfig:
    """Which steps to run, in order, and their settings.

    Attributes:
        steps: names from :data:`STEPS` in the order to apply them; a comma-separated string is accepted.
        clahe_clip: CLAHE clip limit as a fraction of a tile's pixels for 256 bins (scikit-image's
            ``clip_limit``; scaled by 256/bins when more bins are used, so the limit means the same for
            16-bit input). 0 gives plain adaptive equalisation; higher gives more contrast.
        clahe_tile: CLAHE tile (kernel) size in pixels; None uses 1/8 of the image per axis.
        clahe_bins: CLAHE histogram bins; None: 256 for 8-bit data, 1024 for deeper data.
        histeq_bins: histogram equalisation bins; None: 256 for 8-bit data, 65536 for deeper data.
        denoise_method: ``"nlmeans"`` (scikit-image non-local means), ``"bilateral"`` or ``"curvature"``
            (SimpleITK bilateral filter, curvature flow).
        denoise_strength: multiplies the noise level estimated from the image (:func:`noise_sigma`); non-local
            means ``h = 0.8 * strength * sigma``; bilateral range sigma ``2 * strength * sigma``; curvature
            flow runs ``round(5 * strength)`` iterations.
        denoise_spatial: bilateral spatial (domain) sigma in pixels.
        sharpen_method: ``"unsharp"`` (scikit-image unsharp mask) or ``"laplacian"`` (SimpleITK Laplacian
            sharpening, blended with the image by ``sharpen_amount``).
        sharpen_amount: unsharp-mask amount (0 = no change).
        sharpen_radius: unsharp-mask Gaussian radius in pixels.
        gamma: exponent of ``adjust_gamma`` (< 1 brightens, > 1 darkens).
    """

    steps: Sequence[str] | str = ("clahe",)
    clahe_clip: float = 0.01
    clahe_tile: int | None = None
    clahe_bins: int | None = None
    histeq_bins: int | None = None
    denoise_method: str = "nlmeans"
    denoise_strength: float = 1.0
    denoise_spatial: float = 2.0
    sharpen_method: str = "unsharp"
    sharpen_amount: float = 1.0
    sharpen_radius: float = 2.0
    gamma: float = 0.8

    def __post_init__(self) -> None:
        self.steps = parse_steps(self.steps)
        _choice("--denoise-method", self.denoise_method, DENOISE_METHODS)
        _choice("--sharpen-method", self.sharpen_method, SHARPEN_METHODS)
        for name, value, low in (("--clahe-clip", self.clahe_clip, 0.0), ("--sharpen-amount", self.sharpen_amount, 0.0),
                                 ("--denoise-strength", self.denoise_strength, 0.0)):
            if not (np.isfinite(value) and value >= low):
                raise InputError(name, f"must be a number >= {low:g}, got {value}")
        for name, value in (("--sharpen-radius", self.sharpen_radius), ("--gamma", self.gamma),
                            ("--denoise-spatial", self.denoise_spatial)):
            if not (np.isfinite(value) and value > 0):
                raise InputError(name, f"must be a number > 0, got {value}")
        for name, value, low in (("--clahe-tile", self.clahe_tile, 2), ("--clahe-bins", self.clahe_bins, 2),
                                 ("--histeq-bins", self.histeq_bins, 2)):
            if value is not None and (int(value) != value or value < low):
                raise InputError(name, f"must be a whole number >= {low}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Settings as plain JSON-able values."""
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d


def parse_steps(steps: Sequence[str] | str) -> tuple[str, ...]:
    """``"clahe, denoise"`` or ``["clahe", "denoise"]`` -> ``("clahe", "denoise")``, checked against STEPS.

    Raises:
        InputError: an unknown step name (path ``--steps``).
    """
    items = steps.split(",") if isinstance(steps, str) else list(steps)
    names = tuple(str(s).strip().lower() for s in items if str(s).strip())
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        raise InputError("--steps", f"unknown step {', '.join(map(repr, unknown))}; choose from {', '.join(STEPS)}")
    return names


def _choice(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise InputError(name, f"unknown value {value!r}; choose from {', '.join(options)}")


# --------------------------------------------------------------------------------------------- steps


def _depth_of(image: np.ndarray, lo: float, hi: float) -> int:
    """8 for integer-valued data spanning at most 256 levels, else 16 (bins for the histogram steps)."""
    if hi - lo <= 255 and np.array_equal(image, np.round(image)):
        return 8
    return 16


def _histeq(x: np.ndarray, c: EnhanceConfig, depth: int) -> np.ndarray:
    from skimage.exposure import equalize_hist

    return equalize_hist(x, nbins=c.histeq_bins or _HISTEQ_BINS[depth])


def _clahe(x: np.ndarray, c: EnhanceConfig, depth: int) -> np.ndarray:
    from skimage.exposure import equalize_adapthist

    bins = c.clahe_bins or _CLAHE_BINS[depth]
    return equalize_adapthist(x, kernel_size=c.clahe_tile, clip_limit=c.clahe_clip * 256 / bins, nbins=bins)


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation of a 2-D image: median absolute finest-scale Haar diagonal detail / 0.6745.

    Donoho's wavelet MAD estimate, as ``skimage.restoration.estimate_sigma`` computes it with Daubechies
    wavelets; written out for the Haar wavelet because that function needs PyWavelets, which medsynth does
    not depend on. The median ignores the few large coefficients at edges.
    """
    x = np.asarray(image, dtype=np.float64)
    rows, cols = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    if rows == 0 or cols == 0:
        return 0.0
    a, b = x[0:rows:2, 0:cols:2], x[1:rows:2, 0:cols:2]
    c, d = x[0:rows:2, 1:cols:2], x[1:rows:2, 1:cols:2]
    return float(np.median(np.abs(a - b - c + d) / 2.0) / 0.6745)


def _denoise(x: np.ndarray, c: EnhanceConfig, depth: int) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    sigma = noise_sigma(x)
    if not sigma > 0 or c.denoise_strength == 0:
        return x
    if c.denoise_method == "nlmeans":
        return denoise_nl_means(x, h=0.8 * c.denoise_strength * sigma, sigma=sigma, patch_size=5,
                                patch_distance=6, fast_mode=True, preserve_range=True)
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(x.astype(np.float32))
    if c.denoise_method == "bilateral":
        out = sitk.Bilateral(image, domainSigma=c.denoise_spatial, rangeSigma=2.0 * c.denoise_strength * sigma)
    else:  # curvature flow; 0.125 is the stable time step in 2-D
        out = sitk.CurvatureFlow(image, timeStep=0.125, numberOfIterations=max(1, round(5 * c.denoise_strength)))
    return sitk.GetArrayFromImage(out).astype(np.float64)


def _sharpen(x: np.ndarray, c: EnhanceConfig, depth: int) -> np.ndarray:
    if c.sharpen_method == "unsharp":
        from skimage.filters import unsharp_mask

        return unsharp_mask(x, radius=c.sharpen_radius, amount=c.sharpen_amount, preserve_range=True)
    import SimpleITK as sitk

    sharp = sitk.GetArrayFromImage(sitk.LaplacianSharpening(sitk.GetImageFromArray(x.astype(np.float32)),
                                                            useImageSpacing=False))
    return x + c.sharpen_amount * (sharp.astype(np.float64) - x)


def _gamma(x: np.ndarray, c: EnhanceConfig, depth: int) -> np.ndarray:
    from skimage.exposure import adjust_gamma

    return adjust_gamma(x, gamma=c.gamma)


_STEP_FUNCTIONS: dict[str, Callable[[np.ndarray, EnhanceConfig, int], np.ndarray]] = {
    "histeq": _histeq, "clahe": _clahe, "denoise": _denoise, "sharpen": _sharpen, "gamma": _gamma,
}


def enhance(image: np.ndarray, config: EnhanceConfig | Sequence[str] | str,
            value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Run the enhancement chain on one 2-D image.

    Args:
        image: (rows, cols) array in any units.
        config: an :class:`EnhanceConfig`, or just the steps (``"clahe,sharpen"``) with default settings.
        value_range: (min, max) the image is normalised by, e.g. ``meta.value_range`` of a file read by
            :func:`medsynth.image2d.read_image2d`; default the image's own min/max. Equalising steps stretch
            their output over the whole range.

    Returns:
        float32 array of the same shape, within ``value_range``. A constant image is returned unchanged.
    """
    if not isinstance(config, EnhanceConfig):
        config = EnhanceConfig(steps=config)
    values = np.asarray(image, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"enhance expects a 2-D image, got shape {values.shape}")
    if value_range is None:
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(v) for v in value_range)
    if not hi > lo or not config.steps:
        return values.astype(np.float32)
    depth = _depth_of(values, lo, hi)
    x = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    for step in config.steps:
        x = np.clip(_STEP_FUNCTIONS[step](x, config, depth), 0.0, 1.0)
    return (x * (hi - lo) + lo).astype(np.float32)


def image_stats(image: np.ndarray, value_range: tuple[float, float] | None = None) -> dict[str, float]:
    """Simple quality figures of a 2-D image, computed on it normalised to [0, 1] by ``value_range``.

    Use the same ``value_range`` (the input's) for a before/after pair so the figures compare.

    Returns:
        ``contrast``: RMS contrast (standard deviation); ``local_contrast``: mean standard deviation in
        9x9-pixel windows; ``entropy``: Shannon entropy in bits of a 256-bin histogram over [0, 1] (the same
        bins for 8- and 16-bit input, so values compare across depths; at most 8); ``edge_strength``: mean
        Sobel gradient magnitude (``skimage.filters.sobel``); ``noise_sigma``: noise standard deviation
        (:func:`noise_sigma`); ``mean``.
    """
    from scipy.ndimage import uniform_filter
    from skimage.filters import sobel

    values = np.asarray(image, dtype=np.float64)
    lo, hi = value_range if value_range is not None else (values.min(), values.max())
    x = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    mean = uniform_filter(x, size=9, mode="reflect")
    local_var = np.maximum(uniform_filter(x * x, size=9, mode="reflect") - mean * mean, 0.0)
    counts, _ = np.histogram(x, bins=256, range=(0.0, 1.0))
    p = counts[counts > 0] / counts.sum()
    stats = {
        "contrast": float(x.std()),
        "local_contrast": float(np.sqrt(local_var).mean()),
        "entropy": float(-(p * np.log2(p)).sum()),
        "edge_strength": float(sobel(x).mean()),
        "noise_sigma": noise_sigma(x),
        "mean": float(x.mean()),
    }
    return {k: round(v, 6) for k, v in stats.items()}


# --------------------------------------------------------------------------------------------- MONAI


def _monai_transforms() -> dict[str, type]:
    """Build the MONAI transform classes on first use, so importing this module (and ``--help``) stays fast.

    The classes get this module's name and plain qualified names, so they pickle (DataLoader workers) and
    ``from medsynth.enhance import Enhanced`` works through the module ``__getattr__`` below.
    """
    cached = globals().get("_TRANSFORMS")
    if cached is not None:
        return cached
    from monai.transforms import MapTransform, Transform
    from monai.utils import convert_data_type, convert_to_dst_type

    class Enhance(Transform):
        """The enhancement chain as a MONAI array transform.

        Accepts (H, W), channel-first (C, H, W) or (C, H, W, D) arrays or tensors (a ``MetaTensor`` keeps its
        metadata); (C, H, W, D) input is enhanced slice by slice along the last axis. Each 2-D image is
        normalised by its own min/max unless ``value_range`` is given.

        Example:
            >>> Compose([LoadImage(), EnsureChannelFirst(), Enhance("clahe,sharpen")])  # doctest: +SKIP
        """

        def __init__(self, config: EnhanceConfig | Sequence[str] | str = "clahe",
                     value_range: tuple[float, float] | None = None) -> None:
            self.config = config if isinstance(config, EnhanceConfig) else EnhanceConfig(steps=config)
            self.value_range = value_range

        def __call__(self, img: Any) -> Any:
            array, *_ = convert_data_type(img, np.ndarray)
            array = np.asarray(array, dtype=np.float32)
            if array.ndim == 2:
                out = enhance(array, self.config, self.value_range)
            elif array.ndim == 3:
                out = np.stack([enhance(c, self.config, self.value_range) for c in array])
            elif array.ndim == 4:
                out = np.stack([np.stack([enhance(c[..., k], self.config, self.value_range)
                                          for k in range(c.shape[-1])], axis=-1) for c in array])
            else:
                raise ValueError(f"Enhance expects (H, W), (C, H, W) or (C, H, W, D), got shape {array.shape}")
            result, *_ = convert_to_dst_type(out, img, dtype=np.float32 if isinstance(img, np.ndarray) else None)
            return result

    class Enhanced(MapTransform):
        """Dictionary version of :class:`Enhance`, e.g. ``Enhanced("image", "clahe")`` in a training chain."""

        def __init__(self, keys: Any, config: EnhanceConfig | Sequence[str] | str = "clahe",
                     value_range: tuple[float, float] | None = None, allow_missing_keys: bool = False) -> None:
            super().__init__(keys, allow_missing_keys)
            self.enhancer = Enhance(config, value_range)

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            for key in self.key_iterator(d):
                d[key] = self.enhancer(d[key])
            return d

    classes: dict[str, type] = {"Enhance": Enhance, "Enhanced": Enhanced}
    for name, cls in classes.items():
        cls.__module__ = __name__
        cls.__qualname__ = name
    globals().update(classes)
    globals()["_TRANSFORMS"] = classes
    return classes


def __getattr__(name: str) -> Any:
    if name in ("Enhance", "Enhanced"):
        return _monai_transforms()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- files


def preview_path(output: str | Path) -> Path:
    """Where :func:`enhance_file` writes the preview of ``output``: ``<output stem>_preview.png`` beside it."""
    output = Path(output)
    return output.with_name(f"{stem_of(output)}_preview.png")


def enhance_file(source: str | Path, output: str | Path, config: EnhanceConfig | Sequence[str] | str,
                 bit_depth: int | None = None, preview: bool = False) -> dict[str, Any]:
    """Enhance one 2-D image file into ``output``, whose suffix picks the format; replaces ``output``.

    Args:
        source: PNG, JPEG, TIFF or DICOM file.
        output: ``.png``, ``.jpg``, ``.tif``, ``.dcm`` (written with the input's metadata) or ``.nii``/``.nii.gz``
            (float32, the input's geometry).
        config: an :class:`EnhanceConfig`, or just the steps.
        bit_depth: 8 or 16 bits for PNG/TIFF/DICOM output; None keeps the input's.
        preview: also write :func:`preview_path` (``before | after``, 8-bit, see
            :func:`medsynth.pictures.write_before_after`).

    Returns:
        The record ``medsynth-enhance`` prints: ``input``, ``output``, ``steps``, ``before`` and ``after``
        (:func:`image_stats` on the input's value range), ``preview`` (when written) and ``seconds``.

    Raises:
        InputError: ``source`` is unreadable or not a 2-D image.
    """
    if not isinstance(config, EnhanceConfig):
        config = EnhanceConfig(steps=config)
    source, output = Path(source), Path(output)
    started = time.perf_counter()
    image = load_image(source)
    if image.format != "image2d":
        raise InputError(source, "not a 2-D image (medsynth-enhance takes PNG, JPEG, TIFF or DICOM)")
    meta = image.native
    before = image.array[:, :, 0]
    after = enhance(before, config, value_range=meta.value_range)
    if suffix_of(output) in (".nii", ".nii.gz"):
        save_like(image, after[:, :, None], output, overwrite=True)
    else:
        write_image2d(output, after, meta, bit_depth=bit_depth)
    record: dict[str, Any] = {
        "input": str(source), "output": str(output), "steps": list(config.steps),
        "before": image_stats(before, meta.value_range), "after": image_stats(after, meta.value_range),
    }
    if preview:
        record["preview"] = str(write_before_after(preview_path(output), before, after, meta.value_range))
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
