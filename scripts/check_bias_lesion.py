"""How much of a lesion's contrast a bias field takes into itself: ``n4`` against ``n4-peak`` on the shared patients.

For each patient and contrast (T1, T2), with the study's lesion masks (``scripts/study_data/lesion_masks``, label 1
oedema): the oedema's median intensity over the median of the rest of the foreground, raw and after each correction,
and the field's median inside the oedema over its median elsewhere (1: the field leaves the lesion alone). Also each
fit's seconds and, for the peak band, its share of the foreground and of the oedema. A design check of the input
correction, not a translation score: nothing here says how a model converts.

usage: python scripts/check_bias_lesion.py [--widths 0.15,0.25]
Prints a table and writes scripts/results/check_bias_lesion_<kind>.json (machine, versions, figures).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsynth.benchmark import machine, table, write_json  # noqa: E402
from medsynth.bias import PEAK_WIDTH, bias_field, peak_mask, ras_spacing  # noqa: E402
from medsynth.intensity import foreground_threshold  # noqa: E402
from medsynth.io import load_image  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "brain_t1t2"
LESIONS = ROOT / "scripts" / "study_data" / "lesion_masks"


def timed_field(volume: np.ndarray, spacing: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, float]:
    """N4's field (on ``mask``, default the foreground) and the seconds it took."""
    start = time.perf_counter()
    field = bias_field(volume, spacing, mask=mask)
    return field, time.perf_counter() - start


def check(case: Path, contrast: str, widths: list[float]) -> list[dict[str, object]]:
    """The rows of one patient's ``contrast`` volume: raw, ``n4`` and the peak band at each width."""
    image = load_image(case / f"{contrast}.nii.gz")
    x = image.array.astype(np.float32)
    labels = load_image(LESIONS / f"{case.name}.nii.gz", allow_constant=True).array
    spacing = ras_spacing(image.affine)
    fg = x > foreground_threshold(x)
    oedema, rest = fg & (labels == 1), fg & (labels == 0)

    def ratio(y: np.ndarray) -> float:
        return float(np.median(y[oedema]) / np.median(y[rest]))

    base = {"patient": case.name, "contrast": contrast}
    rows: list[dict[str, object]] = [{**base, "correction": "none", "oedema/rest": ratio(x)}]
    fits = [("n4", None)] + [(f"n4-peak {w:g}", peak_mask(x, fg, w)) for w in widths]
    for name, mask in fits:
        field, seconds = timed_field(x, spacing, mask)
        row = {**base, "correction": name, "oedema/rest": ratio(x / field),
               "field oedema/rest": float(np.median(field[oedema]) / np.median(field[rest])), "seconds": seconds}
        if mask is not None:
            row["band share of foreground"] = float(mask.sum() / fg.sum())
            row["oedema in band"] = float((mask & oedema).sum() / max(int(oedema.sum()), 1))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default=f"{PEAK_WIDTH:g},0.25", help="peak-band half-widths to compare")
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"error: {DATA}: the shared patients are not here", file=sys.stderr)
        return 2
    widths = [float(w) for w in args.widths.split(",") if w]
    rows = [row for case in sorted(DATA.iterdir()) if case.is_dir() for contrast in ("t1", "t2")
            for row in check(case, contrast, widths)]
    columns = ["patient", "contrast", "correction", "oedema/rest", "field oedema/rest", "seconds",
               "band share of foreground", "oedema in band"]
    print(table(rows, columns))
    path = write_json("check_bias_lesion", {"machine": machine(), "widths": widths, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
