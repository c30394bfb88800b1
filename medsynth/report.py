"""Which files form a case, and the tables of an evaluation report (``metrics.csv``, ``metrics.json``, the
printed table). The metrics themselves are in :mod:`medsynth.evaluation`.

Example:
    >>> pair_cases(["pred/BraTS-001_t2.nii.gz"], ["data/BraTS-001/t2.nii.gz"])[0].case     # doctest: +SKIP
    'BraTS-001'
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from medsynth.errors import InputError
from medsynth.files import write_atomic
from medsynth.io import stem_of

__all__ = ["CasePair", "case_id", "case_label", "format_table", "pair_cases", "write_tables"]


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


def case_label(path: str | Path) -> str:
    """A training or calibration volume's name for a model file: the file name, with its folder where the name
    alone names no case (``BraTS-001/t1.nii.gz``, not ``t1.nii.gz``)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if case_id(p) == p.parent.name else p.name


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


# ---------------------------------------------------------------------------------------------- tables


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


def write_tables(rows: Sequence[dict[str, Any]], out_dir: Path, arguments: dict[str, Any]) -> None:
    """Write ``metrics.csv`` (one row per case and a mean row) and ``metrics.json`` (with the metric
    definitions and ``arguments``) into ``out_dir``, atomically."""
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

