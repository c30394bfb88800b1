#!/usr/bin/env python
"""How ``--axis all`` should combine its three passes: leave-one-out fold models on their held-out patients.

For every finished fold of each named run folder (``RUNS/<held-out patient>/model.pt``, trained by
``scripts/study_cpu.py`` without that patient), the held-out patient is converted in both directions axially and
with ``--axis all`` under every fusion of :data:`medsynth.fusion.FUSIONS`, and scored over the whole brain and
inside the lesion masks of ``scripts/study_data/lesion_masks`` (:func:`medsynth.evaluation.region_metrics`). The
rule of the eighteenth pass (``scripts/study_data/intros/study_fusion.md``, committed before any held-out figure)
is then read off, seed by seed.

Usage::

    python scripts/study_fusion.py --runs s0=RUNS/recipe --runs s1=RUNS/recipe_seed1
    python scripts/study_fusion.py --runs ... --check    # the inside-the-passes fusion against fusing the outputs
    python scripts/study_fusion.py --runs ... --figure AURORA_sample    # and a PNG through that patient's lesion

Writes ``scripts/results/study_fusion.{md,json}`` (and ``.png`` with ``--figure``; ``--results``); scores are cached
per fold (``fusion_scores.json`` beside each model) so that a report can be rewritten without converting again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from study_cpu import DATA, cases, held_out_case, write_results  # noqa: E402

#: the figures the rule reads: (direction, region, metric)
FIGURES = (("t1-to-t2", "brain", "psnr"), ("t1-to-t2", "brain", "ssim"), ("t2-to-t1", "brain", "psnr"),
           ("t2-to-t1", "brain", "ssim"), ("t1-to-t2", "oedema", "psnr"), ("t1-to-t2", "core", "psnr"),
           ("t2-to-t1", "lesion", "psnr"))
WHOLE_BRAIN, LESION = FIGURES[:4], FIGURES[4:]


def conversions() -> list[tuple[str, str, str]]:
    """(name, axis, fuse) of every conversion scored: axial, then ``--axis all`` with each fusion."""
    from medsynth.fusion import FUSIONS

    return [("axial", "axial", "mean")] + [(f"all-{f}", "all", f) for f in FUSIONS]


def fold_scores(model: Path, held_out: Path, cache: Path | None = None) -> dict[str, Any]:
    """``{conversion: {direction: {region: {psnr, ssim, mae, bias, voxels}}}, "seconds": {conversion: s}}`` of one
    fold model on its held-out patient (seconds: both directions, this machine); cached in ``cache``."""
    from medsynth.fusion import DETAIL_SIGMA, FUSIONS

    made_with = {"fusions": list(FUSIONS), "detail_sigma": DETAIL_SIGMA}
    if cache is not None and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("made_with") == made_with:  # else the fusions changed since: score again
            return cached
    from medsynth.evaluation import region_metrics
    from medsynth.inference import Translator

    translator = Translator.from_file(model, device="cpu")
    t1, t2, regions = held_out_case(held_out)
    mask = regions["brain"]
    out: dict[str, Any] = {"model": str(model), "made_with": made_with, "seconds": {}}
    pairs = {"t1-to-t2": (t1, t2), "t2-to-t1": (t2, t1)}
    for name, axis, fuse in conversions():
        start = time.perf_counter()
        for direction in translator.directions:
            src, ref = pairs[direction]
            y = translator.translate(src, direction=direction, axis=axis, fuse=fuse).array
            out.setdefault(name, {})[direction] = region_metrics(y, ref.array, mask, regions)
        out["seconds"][name] = time.perf_counter() - start
        print(f"  {held_out.name} {name}: {out['seconds'][name]:.1f} s", flush=True)
    if cache is not None:
        cache.write_text(json.dumps(out, indent=1, allow_nan=True) + "\n")
    return out


def means(folds: dict[str, dict[str, Any]], name: str) -> dict[str, float]:
    """Means over folds of the rule's figures for one conversion, keyed ``direction/region/metric`` (a patient
    without a core is left out of the core's mean)."""
    return {"/".join(f): float(np.nanmean([s[name][f[0]][f[1]][f[2]] for s in folds.values()])) for f in FIGURES}


def read_rule(seeds: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The committed rule on the per-seed means: Q1 (``detail`` not below axial on all seven figures, every seed),
    Q2 (not below axial on the whole brain and not below ``mean`` in the lesions, every seed).

    Raises:
        ValueError: fewer than two seeds (the rule needs both).
    """
    if len(seeds) < 2:
        raise ValueError(f"the rule reads two seeds, got {len(seeds)}")
    def holds(seed: dict[str, dict[str, float]], against: str, figures: tuple[tuple[str, str, str], ...]) -> bool:
        return all(seed["all-detail"]["/".join(f)] >= seed[against]["/".join(f)] for f in figures)

    q1 = {s: holds(m, "axial", FIGURES) for s, m in seeds.items()}
    q2 = {s: holds(m, "axial", WHOLE_BRAIN) and holds(m, "all-mean", LESION) for s, m in seeds.items()}
    default = "detail" if all(q1.values()) or all(q2.values()) else "mean"
    return {"q1": q1, "q2": q2, "third_target_met": all(q1.values()), "default_fusion": default}


def check_fusion_space(model: Path, held_out: Path) -> dict[str, float]:
    """How far fusing inside the translator (before the clamp and the intensity map) is from fusing the three
    single-axis outputs afterwards, as the rule's development did: max and mean absolute difference over the
    brain, in the T2's range."""
    import torch

    from medsynth.fusion import fuse_passes
    from medsynth.inference import Translator
    from medsynth.io import load_image

    translator = Translator.from_file(model, device="cpu")
    t1 = load_image(held_out / "t1.nii.gz")
    direction = "t1-to-t2"
    inside = translator.translate(t1, direction=direction, axis="all", fuse="detail").array
    passes = {a: torch.from_numpy(translator.translate(t1, direction=direction, axis=a).array)[None]
              for a in ("axial", "coronal", "sagittal")}
    after = fuse_passes(passes, "detail")[0].numpy()
    brain = t1.array > 0
    span = float(np.ptp(inside[brain]))
    diff = np.abs(inside - after)[brain] / span
    return {"max": float(diff.max()), "mean": float(diff.mean())}


def write_figure(model: Path, held_out: Path, path: Path) -> Path:
    """PNG of one held-out patient, T1 -> T2, through the centre of its lesion mask (cropped to the lesion with a
    margin): the T1, the real T2, axial, ``--axis all`` with ``mean`` and with ``detail``, and the two
    conversions' absolute errors (each image normalised over the brain as the metrics are)."""
    from medsynth.evaluation import normalise_in_mask
    from medsynth.inference import Translator
    from medsynth.pictures import write_case_figure

    translator = Translator.from_file(model, device="cpu")
    t1, t2, regions = held_out_case(held_out)
    brain = regions["brain"]
    direction = "t1-to-t2"
    out = {name: translator.translate(t1, direction=direction, axis=axis, fuse=fuse).array
           for name, axis, fuse in conversions() if name in ("axial", "all-mean", "all-detail")}
    norm = {k: normalise_in_mask(v, brain) * brain for k, v in
            {"T1 (input)": t1.array, "T2 (real)": t2.array, **out}.items()}
    panels = [(k, v, "gray") for k, v in norm.items()]
    panels += [(f"|{k} - T2|", np.abs(norm[k] - norm["T2 (real)"]), "inferno") for k in ("axial", "all-detail")]
    write_case_figure(path, panels, regions["lesion"], t1.affine,
                      f"{held_out.name} (held out), T1 -> T2 through its lesion: axial against --axis all")
    return path


def report(seeds: dict[str, dict[str, dict[str, Any]]], rule: dict[str, Any] | None, intro: str) -> list[str]:
    """Markdown: the intro (with its rule), the means per seed and conversion, per-patient rows, the decision."""
    md = ["# Fusing the three passes of `--axis all` (leave-one-out, held-out patients)", "", intro.strip(), ""]
    head = ("| seed | conversion | T1 -> T2 brain | oedema | core | T2 -> T1 brain | T2 -> T1 lesion | "
            "seconds (both directions, mean per fold) |")
    md += ["## Means over the three folds (PSNR dB / SSIM; lesion figures PSNR dB)", "", head,
           "|---|---|---|---|---|---|---|---|"]
    for seed, folds in seeds.items():
        for name, _, _ in conversions():
            m = means(folds, name)
            secs = np.mean([s["seconds"][name] for s in folds.values()])
            md.append(f"| {seed} | {name} | {m['t1-to-t2/brain/psnr']:.2f} / {m['t1-to-t2/brain/ssim']:.3f} | "
                      f"{m['t1-to-t2/oedema/psnr']:.2f} | {m['t1-to-t2/core/psnr']:.2f} | "
                      f"{m['t2-to-t1/brain/psnr']:.2f} / {m['t2-to-t1/brain/ssim']:.3f} | "
                      f"{m['t2-to-t1/lesion/psnr']:.2f} | {secs:.1f} |")
    md += ["", "## Per patient (held out; PSNR dB: T1 -> T2 brain, oedema, core; T2 -> T1 brain, lesion)", "",
           "| seed | patient | conversion | T1 -> T2 brain | oedema | core | T2 -> T1 brain | T2 -> T1 lesion |",
           "|---|---|---|---|---|---|---|---|"]
    for seed, folds in seeds.items():
        for patient, s in folds.items():
            for name, _, _ in conversions():
                a, b = s[name]["t1-to-t2"], s[name]["t2-to-t1"]
                core = "-" if np.isnan(a["core"]["psnr"]) else f"{a['core']['psnr']:.2f}"  # no core in the mask
                md.append(f"| {seed} | {patient} | {name} | {a['brain']['psnr']:.2f} | {a['oedema']['psnr']:.2f} | "
                          f"{core} | {b['brain']['psnr']:.2f} | {b['lesion']['psnr']:.2f} |")
    md += ["", "## The rule, read off", ""]
    if rule is None:
        return md + ["Not read: it needs every fold of both seeds.", ""]
    yes = {True: "holds", False: "fails"}
    md += [f"- Q1 on seed {s}: {yes[v]}; Q2: {yes[rule['q2'][s]]}" for s, v in rule["q1"].items()]
    md += [f"- Third target met: {'yes' if rule['third_target_met'] else 'no'}; default fusion of `--axis all`: "
           f"`{rule['default_fusion']}`", ""]
    return md


def main(argv: list[str] | None = None) -> int:
    """Score every fold of every ``--runs`` folder, read the rule, write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", action="append", required=True, metavar="SEED=DIR",
                   help="a seed's run folder of one recipe (holding <patient>/model.pt); repeat per seed")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--intro", type=Path, default=HERE / "study_data" / "intros" / "study_fusion.md")
    p.add_argument("--check", action="store_true", help="also measure fusing inside against fusing outputs")
    p.add_argument("--figure", default=None, metavar="PATIENT",
                   help="also draw this held-out patient's lesion (first seed's fold): results/study_fusion.png")
    args = p.parse_args(argv)
    import medsynth
    from medsynth.benchmark import machine

    seeds: dict[str, dict[str, dict[str, Any]]] = {}
    for item in args.runs:
        seed, _, folder = item.partition("=")
        for case in cases():
            model = Path(folder) / case.name / "model.pt"
            if model.exists():
                print(f"seed {seed}, fold {case.name}", flush=True)
                seeds.setdefault(seed, {})[case.name] = fold_scores(model, case, model.parent / "fusion_scores.json")
    seed_means = {s: {name: means(f, name) for name, _, _ in conversions()} for s, f in seeds.items()}
    complete = len(seeds) >= 2 and all(len(f) == len(cases()) for f in seeds.values())
    # the rule is read on whole seeds only: a missing fold or seed would decide on part of the evidence
    rule = read_rule(seed_means) if complete else None
    result: dict[str, Any] = {"machine": machine() | {"medsynth": medsynth.__version__},
                              "runs": args.runs, "means": seed_means, "folds": seeds, "rule": rule}
    if args.check:
        first = next(iter(seeds))
        case = next(iter(seeds[first]))
        folder = dict(r.partition("=")[::2] for r in args.runs)[first]
        result["fusion_space"] = check_fusion_space(Path(folder) / case / "model.pt", DATA / case)
    if args.figure:
        folder = args.runs[0].partition("=")[2]
        case = DATA / args.figure
        result["figure"] = str(write_figure(Path(folder) / args.figure / "model.pt", case,
                                            args.results / "study_fusion.png").name)
    md = report(seeds, rule, args.intro.read_text() if args.intro.exists() else "")
    if "fusion_space" in result:
        fs = result["fusion_space"]
        md += [f"Fusing inside the translator against fusing the three outputs (as the rule's development did): "
               f"mean |difference| {fs['mean']:.5f}, max {fs['max']:.4f} of the brain's range.", ""]
    if "figure" in result:
        md += [f"![{args.figure}, axial against --axis all](study_fusion.png)", ""]
    write_results(args.results, "study_fusion", md, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
