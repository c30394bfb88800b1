#!/usr/bin/env python
"""Does a third registered patient help an unseen head? The packaged recipe trained on one, two and all three
shared patients, each model scored on a paired head none of them saw: the thick-slice MNI template pair.

Leave-one-out over the three shared patients cannot say what training on all three gives: no fourth patient is
left to score it on. The only other registered T1/T2 head in ``../shared/data`` is the MNI avg152 template pair
(``scripts/make_template_pair.py``, made thick-slice as the patients' scans are: ``--slab-mm 5``), which the
packaged recipe trains on. So here the recipe trains *without* it (``..._notemplate``) on every subset of the
patients, and the template pair is the test head: the mean over the two-patient models against the three-patient
model says what the third patient adds on a head none saw, and the one-patient models against the two-patient ones
check that this test reproduces the learning curve the patients themselves showed (one -> two training patients:
+1.04 dB T1 -> T2 and +0.55 dB T2 -> T1 on the unseen patient, ``study_finetune.md``). The template is healthy and
an average of 152 heads (smooth, no noise, no lesion): a proxy for a patient, not one.

Usage::

    python scripts/study_allpairs.py --out study/ --seeds 0,1 --singles-seed 0   # train what is missing, report

Writes ``scripts/results/study_allpairs.{md,json}`` (``--results``, ``--name``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from study_cpu import DATA, RECIPES, build_config, cases, extra_pair, fair_baseline, oracle_baseline  # noqa: E402
from study_cpu import write_results  # noqa: E402
from study_finetune import score  # noqa: E402

DIRECTIONS = ("t1-to-t2", "t2-to-t1")
METRICS = ("psnr", "ssim", "mae")
RECIPE = "ssim30_gate10_augbase_lesions_smooth07_2052_notemplate"
TEST = "mni152_slab5"


def train_subset(subset: tuple[Path, ...], test: Path, root: Path, seed: int, threads: int | None) -> Path:
    """The recipe trained on ``subset`` (one seed), validated once, at its end, on the test head."""
    from medsynth.training import train

    out = root / RECIPE / f"seed{seed}" / "+".join(c.name for c in subset)
    if (out / "model.pt").exists():
        return out
    config = build_config(RECIPE, list(subset), test, out, 0, val_every=10**9, seed=seed, extra_root=root / "_extra")
    config.val_every = config.steps
    config.threads = threads if threads is not None else config.threads
    print(f"[{out.parent.name} / {out.name}] {config.steps} steps", flush=True)
    train(config, progress=False)
    return out


def _mean(items: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {d: {m: float(np.mean([i[d][m] for i in items])) for m in METRICS} for d in DIRECTIONS}


def study(args: argparse.Namespace) -> dict[str, Any]:
    """Train what is missing and gather the scores: ``{"seeds": {seed: {k: [run, ...]}}, "oracle": ...}``."""
    patients = cases()
    test = extra_pair(TEST, args.out / "_extra")
    seeds: dict[str, Any] = {}
    for seed in args.seeds:
        sizes = (3, 2, 1) if seed in args.singles_seed else (3, 2)
        runs: dict[str, list[dict[str, Any]]] = {}
        for k in sizes:
            for subset in itertools.combinations(patients, k):
                run = train_subset(subset, test, args.out, seed, args.threads)
                minutes = json.loads((run / "metrics.json").read_text())[-1]["train_minutes"]
                runs.setdefault(str(k), []).append({"patients": [c.name for c in subset], "minutes": minutes,
                                                    "model": score(run / "model.pt", test),
                                                    "fair": fair_baseline(run, test)})
        seeds[str(seed)] = {k: {"runs": v, "mean": _mean([r["model"] for r in v]),
                                "fair": _mean([r["fair"] for r in v])} for k, v in runs.items()}
    return {"recipe": RECIPE, "spec": RECIPES[RECIPE], "test": TEST, "seeds": seeds,
            "oracle": oracle_baseline(test), "rule": verdict(seeds, args.singles_seed)}


def verdict(seeds: dict[str, Any], singles: list[int]) -> dict[str, Any]:
    """The rule written before the runs ended (``scripts/study_data/intros/study_allpairs.md``)."""
    out: dict[str, Any] = {}
    sanity = [s for s in singles if "1" in seeds.get(str(s), {})]
    out["1_two_beat_one"] = (all(seeds[str(s)]["2"]["mean"][d]["psnr"] > seeds[str(s)]["1"]["mean"][d]["psnr"]
                                 for s in sanity for d in DIRECTIONS) if sanity else None)
    out["2_three_beat_two"] = all(v["3"]["mean"][d]["psnr"] > v["2"]["mean"][d]["psnr"]
                                  for v in seeds.values() for d in DIRECTIONS)
    out["3_ssim_kept"] = all(np.mean([v["3"]["mean"][d]["ssim"] - v["2"]["mean"][d]["ssim"] for v in seeds.values()])
                             >= -0.005 for d in DIRECTIONS)
    out["holds"] = bool(out["1_two_beat_one"] and out["2_three_beat_two"] and out["3_ssim_kept"])
    return out


def _cell(m: dict[str, dict[str, float]], d: str) -> str:
    return f"{m[d]['psnr']:.2f} / {m[d]['ssim']:.3f}"


def report(result: dict[str, Any], results_dir: Path, name: str, intro: Path | None) -> None:
    import platform

    import torch

    md = [intro.read_text().rstrip() + "\n"] if intro else [f"# {name}\n"]
    md += [f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}. Test head: the "
           f"thick-slice template pair (`{TEST}`), masked PSNR dB / SSIM, axial.\n",
           "| seed | training patients | models | minutes | T1 -> T2 | T2 -> T1 | fair T1 -> T2 | fair T2 -> T1 |",
           "|---|---|---|---|---|---|---|---|"]
    for seed, by_k in result["seeds"].items():
        for k in sorted(by_k, reverse=True):
            v = by_k[k]
            minutes = np.mean([r["minutes"] for r in v["runs"]])
            md.append(f"| {seed} | {k} | {len(v['runs'])} | {minutes:.1f} | {_cell(v['mean'], 't1-to-t2')} | "
                      f"{_cell(v['mean'], 't2-to-t1')} | {_cell(v['fair'], 't1-to-t2')} | "
                      f"{_cell(v['fair'], 't2-to-t1')} |")
    o = result["oracle"]
    md += [f"| - | oracle baseline | - | - | {_cell(o, 't1-to-t2')} | {_cell(o, 't2-to-t1')} | - | - |", "",
           "Per model:", "", "| seed | patients | T1 -> T2 | T2 -> T1 |", "|---|---|---|---|"]
    for seed, by_k in result["seeds"].items():
        for k in sorted(by_k, reverse=True):
            for r in by_k[k]["runs"]:
                md.append(f"| {seed} | {' + '.join(r['patients'])} | {_cell(r['model'], 't1-to-t2')} | "
                          f"{_cell(r['model'], 't2-to-t1')} |")
    rule = result["rule"]
    md += ["", "Rule: (1) two-patient mean above one-patient mean, PSNR both directions (the test reproduces the "
           f"learning curve): **{rule['1_two_beat_one']}**; (2) three-patient model above the two-patient mean, PSNR "
           f"both directions, every seed: **{rule['2_three_beat_two']}**; (3) SSIM over the seeds not lower by "
           f"more than 0.005: **{rule['3_ssim_kept']}**. Holds: **{rule['holds']}**.", ""]
    write_results(results_dir, name, md, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("study"), help="folder for the runs")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds of the two- and three-patient models")
    p.add_argument("--singles-seed", default="0", help="comma-separated seeds that also train one-patient models")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per training (default: every core)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--name", default="study_allpairs", help="results file name")
    p.add_argument("--intro", type=Path, default=HERE / "study_data" / "intros" / "study_allpairs.md")
    args = p.parse_args(argv)
    if not DATA.exists():
        print(f"error: {DATA}: the shared BraTS patients are needed", file=sys.stderr)
        return 2
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.singles_seed = [int(s) for s in args.singles_seed.split(",") if s]
    report(study(args), args.results, args.name, args.intro if args.intro.exists() else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
