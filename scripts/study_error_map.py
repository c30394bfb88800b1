"""Where the unseen-patient error lies: each fold's squared error split by region and by spatial scale.

For every finished fold of ``--recipes`` (runs of ``scripts/study_cpu.py`` under ``--out``), the fold's model, the
fair baseline (its intensity maps alone) and the oracle baseline translate the held-out patient (axial), each image
is normalised as the metrics do (0.5-99.5 % over the brain: the reference's and the source's foreground), and the
squared error is split:

- by region: the **rim** (brain voxels within ``--rim`` voxels of the mask's edge, where skull-stripped, resampled
  scans are partial-volumed with the zero background in both contrasts) and the interior by the reference's own
  levels (its darkest third, middle third, 66-90 % and top 10 %); for each the share of voxels, the share of the
  squared error and the bias (mean prediction - reference);
- by scale: the share of the squared error that a Gaussian of ``--sigma`` voxels keeps (the error's low-frequency
  part, normalised inside the mask: regional levels and bias fields rather than edges and texture), and the PSNR
  with it taken away, and the PSNR of the interior alone (rim left out).

It also tabulates the real images' levels by distance from the mask's edge (medians of each normalised image at
1, 2, ... 8 voxels), which shows the partial volume at the rim. Writes ``--name``.md and .json (machine, versions,
every figure) into ``--results``. Not a recipe choice: a map of what is left.

usage: python scripts/study_error_map.py --out RUNS --recipes R,R_seed1 [--rim 3] [--sigma 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study_cpu  # noqa: E402  (the folds and the data live there)

DIRECTIONS = ("t1-to-t2", "t2-to-t1")
IMAGES = ("model", "fair", "oracle")
#: interior bands by the reference's own levels (quantiles over the interior)
BANDS = (("dark third", 0.0, 1 / 3), ("middle third", 1 / 3, 2 / 3), ("66-90 %", 2 / 3, 0.9), ("top 10 %", 0.9, 1.0))
PROFILE_DEPTH = 8


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on a [0, 1] scale."""
    return float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf")


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """Each mask voxel's Euclidean distance in voxels to the nearest voxel outside it (1 at the edge)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask)


def error_map(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, rim: float = 3.0, sigma: float = 4.0,
              distance: np.ndarray | None = None) -> dict[str, Any]:
    """The split of ``pred``'s squared error against ``ref`` inside ``mask`` (both already on the metrics' [0, 1]
    scale).

    Returns:
        ``{"psnr", "psnr_interior", "psnr_without_low", "low_share", "regions": {name: {"voxels", "error",
        "bias"}}}``: ``voxels`` and ``error`` are shares of the mask's voxels and of its summed squared error
        (each set of regions sums to 1), ``bias`` the mean of ``pred - ref`` there.
    """
    from scipy import ndimage

    mask = mask.astype(bool)
    diff = np.where(mask, pred.astype(np.float64) - ref.astype(np.float64), 0.0)
    sq = diff**2
    total = float(sq[mask].sum())
    count = int(mask.sum())
    distance = edge_distance(mask) if distance is None else distance
    edge = mask & (distance <= rim)
    interior = mask & ~edge
    regions: dict[str, np.ndarray] = {"rim": edge}
    cuts = np.quantile(ref[interior], [b[1] for b in BANDS] + [1.0]) if interior.any() else None
    for i, (name, _, _) in enumerate(BANDS):
        if cuts is None:
            regions[name] = np.zeros_like(mask)
            continue
        upper = ref <= cuts[i + 1] if i == len(BANDS) - 1 else ref < cuts[i + 1]
        regions[name] = interior & (ref >= cuts[i]) & upper
    out: dict[str, Any] = {"regions": {}}
    for name, region in regions.items():
        n = int(region.sum())
        out["regions"][name] = {"voxels": n / count, "error": float(sq[region].sum()) / total if total else 0.0,
                                "bias": float(diff[region].mean()) if n else float("nan")}
    # the error's low-frequency part: a normalised convolution, so the background's zeros do not pull it down
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    low = np.where(mask, ndimage.gaussian_filter(diff, sigma) / np.maximum(weight, 1e-6), 0.0)
    out["psnr"] = psnr(total / count)
    out["psnr_interior"] = psnr(float(sq[interior].sum()) / max(int(interior.sum()), 1))
    out["low_share"] = float((low[mask] ** 2).sum()) / total if total else 0.0
    out["psnr_without_low"] = psnr(float(((diff - low)[mask] ** 2).sum()) / count)
    return out


def rim_profile(image: np.ndarray, mask: np.ndarray, distance: np.ndarray) -> list[float]:
    """Medians of a normalised image at 1, 2, ... :data:`PROFILE_DEPTH` voxels from the mask's edge, then inside."""
    rows = [float(np.median(image[mask & (distance > d - 1) & (distance <= d)])) for d in range(1, PROFILE_DEPTH + 1)]
    return rows + [float(np.median(image[mask & (distance > PROFILE_DEPTH)]))]


def fold_maps(run: Path, held_out: Path, rim: float, sigma: float) -> dict[str, Any]:
    """The error maps of one fold's model and both baselines on its held-out patient, both directions."""
    from medsynth.evaluation import baseline_translate, normalise_in_mask
    from medsynth.inference import Translator, fair_baseline_translator
    from medsynth.io import load_image

    translator = Translator.from_file(run / "model.pt", device="cpu")
    fair = fair_baseline_translator(run / "model.pt", device="cpu")
    t1, t2 = load_image(held_out / "t1.nii.gz"), load_image(held_out / "t2.nii.gz")
    mask = (t1.array > 0) & (t2.array > 0)
    distance = edge_distance(mask)
    out: dict[str, Any] = {}
    for direction, (src, ref) in zip(DIRECTIONS, ((t1, t2), (t2, t1))):
        images = {"model": translator.translate(src, direction=direction, axis="axial").array,
                  "fair": fair.translate(src, direction=direction, axis="axial").array,
                  "oracle": baseline_translate(src.array, ref.array, mask)}
        target = normalise_in_mask(ref.array, mask)
        out[direction] = {k: error_map(normalise_in_mask(v, mask), target, mask, rim, sigma, distance)
                          for k, v in images.items()}
    return out


def patient_profiles() -> dict[str, dict[str, list[float]]]:
    """Each shared patient's real T1 and T2 levels by distance from the brain mask's edge."""
    from medsynth.evaluation import normalise_in_mask
    from medsynth.io import load_image

    out = {}
    for case in study_cpu.cases():
        t1, t2 = (load_image(case / f"{n}.nii.gz").array for n in ("t1", "t2"))
        mask = (t1 > 0) & (t2 > 0)
        distance = edge_distance(mask)
        out[case.name] = {n: rim_profile(normalise_in_mask(a, mask), mask, distance)
                          for n, a in (("t1", t1), ("t2", t2))}
    return out


def _mean_maps(maps: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("psnr", "psnr_interior", "psnr_without_low", "low_share")
    out: dict[str, Any] = {k: float(np.mean([m[k] for m in maps])) for k in keys}
    out["regions"] = {r: {f: float(np.mean([m["regions"][r][f] for m in maps])) for f in ("voxels", "error", "bias")}
                      for r in maps[0]["regions"]}
    return out


def write_report(result: dict[str, Any], results: Path, name: str, command: str) -> None:
    """``name``.md and ``name``.json."""
    from medsynth.benchmark import machine

    result["machine"] = machine()
    regions = ["rim"] + [b[0] for b in BANDS]
    md = ["# Where the unseen-patient error lies", "",
          f"Each fold's model and both baselines on the fold's held-out patient, axial, every image normalised to the "
          f"brain's 0.5-99.5 % as the metrics do. Rim: brain voxels within {result['rim']:g} voxels of the mask's "
          f"edge; the interior split by the reference's own levels. Per region: share of voxels / share of the squared "
          f"error / bias (prediction - reference). Low: the share of the squared error a Gaussian of "
          f"{result['sigma']:g} voxels keeps, and the PSNR without it. Not a recipe choice.", "",
          "## Means over the folds", "",
          "| recipe | direction | image | PSNR | interior PSNR | low share | PSNR without low | "
          + " | ".join(regions) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(regions)]
    for recipe, by_direction in result["means"].items():
        for direction, by_image in by_direction.items():
            for image, m in by_image.items():
                cells = " | ".join(f"{m['regions'][r]['voxels']:.2f} / {m['regions'][r]['error']:.2f} / "
                                   f"{m['regions'][r]['bias']:+.3f}" for r in regions)
                md.append(f"| {recipe} | {direction} | {image} | {m['psnr']:.2f} | {m['psnr_interior']:.2f} | "
                          f"{m['low_share']:.2f} | {m['psnr_without_low']:.2f} | {cells} |")
    md += ["", "## Per held-out patient (the model)", "",
           "| recipe | held out | direction | PSNR | interior PSNR | low share | PSNR without low | "
           + " | ".join(regions) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(regions)]
    for recipe, folds in result["folds"].items():
        for case, by_direction in folds.items():
            for direction, by_image in by_direction.items():
                m = by_image["model"]
                cells = " | ".join(f"{m['regions'][r]['voxels']:.2f} / {m['regions'][r]['error']:.2f} / "
                                   f"{m['regions'][r]['bias']:+.3f}" for r in regions)
                md.append(f"| {recipe} | {case} | {direction} | {m['psnr']:.2f} | {m['psnr_interior']:.2f} | "
                          f"{m['low_share']:.2f} | {m['psnr_without_low']:.2f} | {cells} |")
    depth = ", ".join(str(d) for d in range(1, PROFILE_DEPTH + 1))
    md += ["", "## The real images at the rim", "",
           f"Medians of each normalised image at {depth} voxels from the brain mask's edge, and deeper:", "",
           "| patient | image | " + " | ".join(str(d) for d in range(1, PROFILE_DEPTH + 1)) + " | deeper |",
           "|---|---|" + "---|" * (PROFILE_DEPTH + 1)]
    for case, rows in result["profiles"].items():
        for image, values in rows.items():
            md.append(f"| {case} | {image.upper()} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    m = result["machine"]
    md += ["", f"Machine: {m.get('platform')}, {m.get('cpu')}, Python {m.get('python')}, torch "
               f"{m.get('torch')}. Command: `{command}`.", ""]
    study_cpu.write_results(results, name, md, result)


def main(argv: list[str] | None = None) -> int:
    """Map, average, report; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the runs of scripts/study_cpu.py")
    p.add_argument("--recipes", required=True, help="comma-separated recipes")
    p.add_argument("--rim", type=float, default=3.0, help="rim depth in voxels (default 3)")
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian of the error's low-frequency part, voxels")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--name", default="study_error_map")
    args = p.parse_args(argv)
    if not study_cpu.DATA.exists():
        print(f"error: {study_cpu.DATA}: the shared BraTS patients are needed", file=sys.stderr)
        return 2
    recipes = [r for r in args.recipes.split(",") if r]
    result: dict[str, Any] = {"rim": args.rim, "sigma": args.sigma, "folds": {}, "means": {}}
    for recipe in recipes:
        folds = {}
        for case in study_cpu.cases():
            run = args.out / recipe / case.name
            if (run / "model.pt").exists():
                print(f"[{recipe} / {case.name}]", flush=True)
                folds[case.name] = fold_maps(run, case, args.rim, args.sigma)
        if not folds:
            print(f"error: {args.out / recipe}: no finished fold", file=sys.stderr)
            return 2
        result["folds"][recipe] = folds
        result["means"][recipe] = {d: {i: _mean_maps([f[d][i] for f in folds.values()]) for i in IMAGES}
                                   for d in DIRECTIONS}
    result["profiles"] = patient_profiles()
    command = (f"python scripts/study_error_map.py --out RUNS --recipes {','.join(recipes)} --rim {args.rim:g} "
               f"--sigma {args.sigma:g}")
    write_report(result, args.results, args.name, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
