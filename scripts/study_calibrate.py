"""Leave-one-out study of the output calibration curve (``medsynth-calibrate``) on the shared patients.

Each finished fold of ``--recipes`` (runs of ``scripts/study_cpu.py`` under ``--out``) is calibrated in one
direction with :func:`medsynth.calibration.calibrate_model` on the fold's own training patients (never the held-out
one, nor the template pair), and both models, as trained and calibrated, are scored on the held-out patient over the
whole brain and inside the lesion masks, beside the fair and oracle baselines (``study_cpu.lesion_scores``). Writes
``--name``.md and .json (machine, versions, every figure) into ``--results``.

usage: python scripts/study_calibrate.py --out RUNS --recipes R,R_seed1 [--direction t1-to-t2] [--packaged]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study_cpu  # noqa: E402  (the folds, the lesion scores and the data live there)

DIRECTIONS = ("t1-to-t2", "t2-to-t1")
REGIONS = ("brain", "oedema", "core")


def calibrated(model: Path, held_out: str, direction: str, out: Path) -> Path:
    """``out``: ``model`` calibrated on every shared patient but ``held_out`` (made once)."""
    from medsynth.calibration import calibrate_model

    if out.exists():
        return out
    train = [c for c in study_cpu.cases() if c.name != held_out]
    src, dst = direction.split("-to-")
    print(f"calibrating {model} ({direction}) on {', '.join(c.name for c in train)}", flush=True)
    return calibrate_model(model, [c / f"{src}.nii.gz" for c in train], [c / f"{dst}.nii.gz" for c in train], out,
                           direction, device="cpu")


def fold_scores(root: Path, recipes: list[str], direction: str, packaged: bool) -> dict[str, Any]:
    """Per recipe and fold: the scores of the model as trained and calibrated (``lesion_scores`` dicts)."""
    from medsynth.inference import default_model_path

    result: dict[str, Any] = {}
    jobs = [(recipe, case.name, root / recipe / case.name) for recipe in recipes for case in study_cpu.cases()]
    if packaged:
        jobs.append(("packaged model", study_cpu.PACKAGED[1], root / "packaged"))
    for recipe, held_out, run in jobs:
        model = default_model_path() if recipe == "packaged model" else run / "model.pt"
        if not model.exists():
            continue
        run.mkdir(parents=True, exist_ok=True)
        cal = calibrated(model, held_out, direction, run / f"model_calibrated_{direction}.pt")
        case = study_cpu.DATA / held_out
        print(f"[{recipe} / {held_out}] scoring", flush=True)
        plain = study_cpu.lesion_scores(model, case, run / "lesion_scores.json")
        after = study_cpu.lesion_scores(cal, case, run / f"lesion_scores_calibrated_{direction}.json")
        minutes = None
        if (run / "metrics.json").exists():
            minutes = json.loads((run / "metrics.json").read_text())[-1].get("train_minutes")
        result.setdefault(recipe, {})[held_out] = {"plain": plain, "calibrated": after, "train_minutes": minutes}
    return result


def rule(result: dict[str, Any], recipes: list[str], direction: str) -> tuple[bool, list[str]]:
    """The pass's rule (scripts/study_data/intros/study_calibrate.md) and one line per test."""
    lines, ok = [], True
    for recipe in recipes:
        m = result["means"].get(recipe)
        if m is None:
            return False, [f"{recipe}: no finished folds"]
        p, c = m["plain"][direction]["model"]["brain"], m["calibrated"][direction]["model"]["brain"]
        up = c["psnr"] > p["psnr"]
        ok &= up
        lines.append(f"{recipe}: whole-brain PSNR {p['psnr']:.2f} -> {c['psnr']:.2f} dB: "
                     f"{'higher' if up else 'NOT higher'}")
        for region in ("oedema", "core"):
            cal = m["calibrated"][direction]
            above = all(cal["model"][region]["psnr"] > cal[b][region]["psnr"] for b in ("fair", "oracle"))
            ok &= above
            lines.append(f"{recipe}: {region} {cal['model'][region]['psnr']:.2f} dB against fair "
                         f"{cal['fair'][region]['psnr']:.2f}, oracle {cal['oracle'][region]['psnr']:.2f}: "
                         f"{'above both' if above else 'NOT above both'}")
    ssim = {w: float(np.mean([result["means"][r][w][direction]["model"]["brain"]["ssim"] for r in recipes]))
            for w in ("plain", "calibrated")}
    kept = ssim["calibrated"] >= ssim["plain"]
    ok &= kept
    lines.append(f"whole-brain SSIM over the seeds {ssim['plain']:.3f} -> {ssim['calibrated']:.3f}: "
                 f"{'not lower' if kept else 'LOWER'}")
    return ok, lines


def _cell(r: dict[str, float]) -> str:
    return f"{r['psnr']:.2f} / {r['ssim']:.3f}"


def _oedema(scores: dict[str, Any]) -> str:
    r = scores["model"]["oedema"]
    return f"{r['psnr']:.2f} / {r['bias']:+.3f}" if r["voxels"] else "-"


def write_report(result: dict[str, Any], recipes: list[str], direction: str, results: Path, name: str,
                 intro: str) -> None:
    """``name``.md (tables, the rule) and ``name``.json."""
    import monai
    import torch

    result["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                         "python": platform.python_version(), "torch": torch.__version__,
                         "monai": monai.__version__, "threads": torch.get_num_threads()}
    ok, lines = rule(result, recipes, direction)
    result["rule"] = {"holds": ok, "tests": lines}
    md = [f"# Output calibration ({direction}), leave-one-out", "", intro.strip(), ""] if intro else [
        f"# Output calibration ({direction}), leave-one-out", ""]
    md += ["## Means over the three folds", "",
           "PSNR dB / SSIM, axial; brain = whole brain, oedema = label 1, core = label 2 of "
           "`scripts/study_data/lesion_masks`; every image normalised over the brain's 0.5-99.5 %.", "",
           "| recipe | model | direction | brain | oedema | core | oedema bias | core bias |", "|---|---|---|---|---|---|---|---|"]
    for recipe in result["means"]:
        for which in ("plain", "calibrated"):
            for d in DIRECTIONS:
                r = result["means"][recipe][which][d]["model"]
                md.append(f"| {recipe} | {'as trained' if which == 'plain' else 'calibrated'} | {d} | "
                          f"{_cell(r['brain'])} | {_cell(r['oedema'])} | {_cell(r['core'])} | "
                          f"{r['oedema']['bias']:+.3f} | {r['core']['bias']:+.3f} |")
        for kind in ("fair", "oracle"):
            for d in DIRECTIONS:
                r = result["means"][recipe]["plain"][d][kind]
                md.append(f"| {recipe} | {kind} baseline | {d} | {_cell(r['brain'])} | {_cell(r['oedema'])} | "
                          f"{_cell(r['core'])} | {r['oedema']['bias']:+.3f} | {r['core']['bias']:+.3f} |")
    md += ["", f"## Rule: {'holds' if ok else 'does not hold'}", "", *[f"- {line}" for line in lines], "",
           "## Per patient", "", f"{direction}, whole brain, PSNR dB / SSIM (the other direction is not calibrated).",
           "", "| recipe | held-out patient | training minutes | as trained | calibrated | fair | oracle | "
               "oedema as trained (PSNR / bias) | oedema calibrated |",
           "|---|---|---|---|---|---|---|---|---|"]
    for recipe, folds in result["folds"].items():
        for case, f in folds.items():
            minutes = f"{f['train_minutes']:.1f}" if f.get("train_minutes") else "-"
            md.append(f"| {recipe} | {case} | {minutes} | {_cell(f['plain'][direction]['model']['brain'])} | "
                      f"{_cell(f['calibrated'][direction]['model']['brain'])} | "
                      f"{_cell(f['plain'][direction]['fair']['brain'])} | "
                      f"{_cell(f['plain'][direction]['oracle']['brain'])} | {_oedema(f['plain'][direction])} | "
                      f"{_oedema(f['calibrated'][direction])} |")
    m = result["machine"]
    md += ["", f"Machine: {m['platform']}, {m['processor']}, Python {m['python']}, torch {m['torch']}, MONAI "
               f"{m['monai']}, {m['threads']} threads. Command: `python scripts/study_calibrate.py --out RUNS "
               f"--recipes {','.join(recipes)} --direction {direction} --packaged`.", ""]
    study_cpu.write_results(results, name, md, result)


def main(argv: list[str] | None = None) -> int:
    """Calibrate, score, report; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the runs of scripts/study_cpu.py")
    p.add_argument("--recipes", required=True, help="comma-separated recipes (seeds of one, for the rule)")
    p.add_argument("--direction", default="t1-to-t2", choices=DIRECTIONS)
    p.add_argument("--packaged", action="store_true",
                   help="also the packaged model on its held-out patient, calibrated on its two training patients")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--name", default="study_calibrate")
    p.add_argument("--intro", type=Path, default=HERE / "study_data" / "intros" / "study_calibrate.md")
    args = p.parse_args(argv)
    if not study_cpu.DATA.exists():
        print(f"error: {study_cpu.DATA}: the shared BraTS patients are needed", file=sys.stderr)
        return 2
    recipes = [r for r in args.recipes.split(",") if r]
    folds = fold_scores(args.out, recipes, args.direction, args.packaged)
    result: dict[str, Any] = {"direction": args.direction, "folds": folds, "means": {}}
    for recipe in recipes:
        if recipe in folds:
            result["means"][recipe] = {w: study_cpu.fold_means([f[w] for f in folds[recipe].values()], REGIONS)
                                       for w in ("plain", "calibrated")}
    intro = args.intro.read_text() if args.intro and args.intro.exists() else ""
    write_report(result, recipes, args.direction, args.results, args.name, intro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
