#!/usr/bin/env python
"""Fine-tuning's learning curve: how far ``medsynth-train --init MODEL`` takes a model made elsewhere with a site's
own registered pairs, against training from scratch on them.

With the three shared patients every ordered triple (E, S, T) is a trial: a model trained on patient E alone
("elsewhere", ``--steps``) is fine-tuned on patient S ("the site's pair", ``--ft-steps``, validated on T at
``--points`` steps) and scored on T, a patient neither saw. Beside it, on the same T: E's model as it is (0 site
pairs), a model trained from scratch on S alone (1 site pair), the leave-one-out fold trained from scratch on E and
S together (``--loo``: the study_cpu runs of the same recipe; both pairs at hand from the start), and the fair and
oracle baselines. Figures are means over the six trials, never one patient. Fine-tuning on two site pairs would
leave no third patient to have made the model elsewhere, so the two-pair point is the joint model.

Usage::

    python scripts/study_finetune.py --out study/ --loo study/ssim30_gate10_augbase_lesions \\
        --steps 1368 --ft-steps 456 --points 4

Writes ``scripts/results/study_finetune.{md,json,png}`` (``--results``, ``--name``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from study_cpu import DATA, RECIPES, build_config, cases, fair_baseline, oracle_baseline  # noqa: E402

DIRECTIONS = ("t1-to-t2", "t2-to-t1")
METRICS = ("psnr", "ssim", "mae")


def score(model: Path, case: Path) -> dict[str, dict[str, float]]:
    """A model's masked PSNR / SSIM / MAE on one patient, both directions, axial; cached beside the model."""
    cache = model.parent / f"score_{case.name}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from medsynth.evaluation import masked_metrics
    from medsynth.inference import Translator
    from medsynth.io import load_image

    translator = Translator.from_file(model, device="cpu")
    t1, t2 = load_image(case / "t1.nii.gz"), load_image(case / "t2.nii.gz")
    mask = (t1.array > 0) & (t2.array > 0)
    out = {}
    for direction, (src, ref) in zip(translator.directions, ((t1, t2), (t2, t1))):
        out[direction] = masked_metrics(translator.translate(src, direction=direction, axis="axial").array,
                                        ref.array, mask)
    cache.write_text(json.dumps(out, indent=2) + "\n")
    return out


def _cached(out: Path, steps: int) -> bool:
    """Whether ``out`` holds a finished run of ``steps`` steps (one of another length is refused, not reused)."""
    if not (out / "model.pt").exists():
        return False
    done = json.loads((out / "config.json").read_text())["steps"]
    if done != steps:
        raise SystemExit(f"error: {out}: a finished run of {done} steps, not {steps}: give another --out")
    return True


def train_single(recipe: str, case: Path, root: Path, steps: int, threads: int | None) -> Path:
    """The recipe trained from scratch on one patient (no validation: every other patient is someone's test)."""
    from medsynth.training import train

    out = root / f"single_{recipe}" / case.name
    if _cached(out, steps):
        return out / "model.pt"
    config = build_config(recipe, [case], case, out, steps, val_every=10**9)
    config.val_a, config.val_b = [], []
    config.threads = threads if threads is not None else config.threads
    print(f"[single {recipe} / {case.name}] {steps} steps", flush=True)
    train(config, progress=False)
    return out / "model.pt"


def fine_tune(recipe: str, init: Path, site: Path, test: Path, root: Path, steps: int, points: int,
              threads: int | None, elsewhere: str) -> Path:
    """``init`` fine-tuned on the site's patient with the same recipe, validated on ``test``."""
    from medsynth.training import train

    out = root / f"finetune_{recipe}" / f"{elsewhere}__{site.name}__{test.name}"
    if _cached(out, steps):
        return out
    config = build_config(recipe, [site], test, out, steps, val_every=max(steps // points, 1))
    config.init = str(init)
    config.threads = threads if threads is not None else config.threads
    print(f"[fine-tune {elsewhere} on {site.name}, test {test.name}] {steps} steps", flush=True)
    t0 = time.perf_counter()
    train(config, progress=False)
    (out / "wall_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    return out


def _mean(items: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {d: {m: float(np.mean([i[d][m] for i in items])) for m in METRICS} for d in DIRECTIONS}


def study(args: argparse.Namespace) -> dict[str, Any]:
    """Train what is missing and gather every trial's scores."""
    all_cases = cases()
    singles = {c.name: train_single(args.recipe, c, args.out, args.steps, args.threads) for c in all_cases}
    trials = []
    for e, s, t in itertools.permutations(all_cases, 3):
        run = fine_tune(args.recipe, singles[e.name], s, t, args.out, args.ft_steps, args.points, args.threads,
                        e.name)
        curve = json.loads((run / "metrics.json").read_text())
        joint = args.loo / t.name / "model.pt"
        trial = {"elsewhere": e.name, "site": s.name, "test": t.name,
                 "as_is": score(singles[e.name], t), "fine_tuned": score(run / "model.pt", t),
                 "scratch_site": score(singles[s.name], t),
                 "joint": score(joint, t) if joint.exists() else None,
                 "fair": fair_baseline(singles[e.name].parent, t), "oracle": oracle_baseline(t),
                 "curve": [{"step": p["step"], "train_minutes": p["train_minutes"],
                            **{d: p[d] for d in DIRECTIONS}} for p in curve],
                 "fine_tune_minutes": curve[-1]["train_minutes"]}
        trials.append(trial)
    means = {k: _mean([t[k] for t in trials]) for k in ("as_is", "fine_tuned", "scratch_site", "fair", "oracle")}
    if all(t["joint"] is not None for t in trials):
        means["joint"] = _mean([t["joint"] for t in trials])
    n_points = min(len(t["curve"]) for t in trials)
    curve = [{"step": trials[0]["curve"][i]["step"],
              "train_minutes": float(np.mean([t["curve"][i]["train_minutes"] for t in trials])),
              **_mean([t["curve"][i] for t in trials])} for i in range(n_points)]
    return {"recipe": args.recipe, "spec": RECIPES[args.recipe], "steps": args.steps, "ft_steps": args.ft_steps,
            "loo": str(args.loo), "trials": trials, "means": means, "mean_curve": curve}


ROWS = (("as_is", "elsewhere's model as it is", "0"), ("fine_tuned", "fine-tuned on the site's pair (--init)", "1"),
        ("scratch_site", "from scratch on the site's pair", "1"),
        ("joint", "from scratch on both (the leave-one-out fold)", "2"),
        ("fair", "fair baseline (elsewhere's histograms)", "-"), ("oracle", "oracle baseline", "-"))


def report(result: dict[str, Any], results_dir: Path, name: str) -> None:
    """Markdown, JSON and a PNG of the learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsynth.benchmark import machine as machine_info
    from medsynth.files import write_atomic

    results_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine_info()}
    write_atomic(results_dir / f"{name}.json", json.dumps(result, indent=2) + "\n")
    means = result["means"]
    minutes = float(np.mean([t["fine_tune_minutes"] for t in result["trials"]]))
    lines = ["| model (scored on a patient neither trained on) | site pairs | T1 -> T2 PSNR / SSIM | "
             "T2 -> T1 PSNR / SSIM |", "|---|---|---|---|"]
    for key, label, pairs in ROWS:
        if key in means:
            m = means[key]
            lines.append(f"| {label} | {pairs} | {m['t1-to-t2']['psnr']:.2f} / {m['t1-to-t2']['ssim']:.3f} | "
                         f"{m['t2-to-t1']['psnr']:.2f} / {m['t2-to-t1']['ssim']:.3f} |")
    per = ["| elsewhere | site | test | as is T1->T2 | fine-tuned T1->T2 | as is T2->T1 | fine-tuned T2->T1 |",
           "|---|---|---|---|---|---|---|"]
    for t in result["trials"]:
        cells = [f"{t[k][d]['psnr']:.2f} / {t[k][d]['ssim']:.3f}" for d in DIRECTIONS for k in ("as_is", "fine_tuned")]
        per.append(f"| {t['elsewhere']} | {t['site']} | {t['test']} | {' | '.join(cells)} |")
    curve = ["| fine-tune step | minutes | T1 -> T2 PSNR / SSIM | T2 -> T1 PSNR / SSIM |", "|---|---|---|---|"]
    start = means["as_is"]
    curve.append(f"| 0 | 0 | {start['t1-to-t2']['psnr']:.2f} / {start['t1-to-t2']['ssim']:.3f} | "
                 f"{start['t2-to-t1']['psnr']:.2f} / {start['t2-to-t1']['ssim']:.3f} |")
    for p in result["mean_curve"]:
        curve.append(f"| {p['step']} | {p['train_minutes']:.2f} | {p['t1-to-t2']['psnr']:.2f} / "
                     f"{p['t1-to-t2']['ssim']:.3f} | {p['t2-to-t1']['psnr']:.2f} / {p['t2-to-t1']['ssim']:.3f} |")
    machine = result["machine"]
    text = (f"# Fine-tuning a model made elsewhere (`--init`)\n\n"
            f"Recipe `{result['recipe']}`; each single-patient model trained {result['steps']} steps, fine-tuned "
            f"{result['ft_steps']} steps ({minutes:.1f} training minutes on average). Means over the six ordered "
            f"triples (elsewhere, site, test) of the three shared patients; masked PSNR dB / SSIM, axial, on the "
            f"test patient. Machine: {machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads, "
            f"torch {machine.get('torch', '?')}; "
            f"`python scripts/study_finetune.py` (see its docstring).\n\n" + "\n".join(lines)
            + "\n\nOver all six triples the first and third rows average the same single-patient models on the same "
              "test patients (each model is some trial's elsewhere and another's site), so they are equal by "
              "construction; the comparison is row by row within a trial (below): the fine-tuned model against the "
              "model that started it (0 site pairs) and against training on the site's pair from scratch (the "
              "third row, whose trial's elsewhere and site are swapped)."
            + "\n\n## Learning curve (mean over the six trials, validation on the test patient)\n\n"
            + "\n".join(curve) + "\n\n## Per trial\n\n" + "\n".join(per) + "\n")
    write_atomic(results_dir / f"{name}.md", text)

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    steps = [0] + [p["step"] for p in result["mean_curve"]]
    for col, d in enumerate(DIRECTIONS):
        for row, m in enumerate(("psnr", "ssim")):
            ax = axes[row, col]
            ys = [start[d][m]] + [p[d][m] for p in result["mean_curve"]]
            ax.plot(steps, ys, "o-", color="C0", label="elsewhere's model fine-tuned on the site's pair")
            for key, color, style, label in (("scratch_site", "C1", "--", "from scratch on the site's pair"),
                                             ("joint", "C2", "--", "from scratch on both pairs"),
                                             ("fair", "C7", ":", "fair baseline"), ("oracle", "k", ":", "oracle baseline")):
                if key in means:
                    ax.axhline(means[key][d][m], color=color, linestyle=style, label=label)
            ax.set_title(f"{d.replace('-to-', ' -> ').upper()} {m.upper()}")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("fine-tuning steps")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Fine-tuning with one site pair: mean over six trials, on patients neither model saw")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = results_dir / f".{name}.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(results_dir / f"{name}.png")
    print(text)
    print(f"wrote {results_dir / name}.md, .json, .png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("study"), help="folder for the runs")
    p.add_argument("--recipe", default="ssim30_gate10_augbase_lesions_smooth07",
                   help="a study_cpu recipe (default: the fifth pass's packaged recipe, which the reported curve "
                        "used; the sixth pass's adds the template pair to every model, the fine-tuning data included)")
    p.add_argument("--loo", type=Path, default=None,
                   help="the study_cpu runs of the recipe (one folder per held-out patient; default OUT/RECIPE)")
    p.add_argument("--steps", type=int, default=1368, help="steps of each single-patient model")
    p.add_argument("--ft-steps", type=int, default=456, help="fine-tuning steps")
    p.add_argument("--points", type=int, default=4, help="validation points while fine-tuning")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per training (default: every core)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--name", default="study_finetune", help="results file name")
    args = p.parse_args(argv)
    if not DATA.exists():
        print(f"error: {DATA}: the shared BraTS patients are needed", file=sys.stderr)
        return 2
    if args.recipe not in RECIPES:
        print(f"error: {args.recipe}: unknown recipe", file=sys.stderr)
        return 2
    if "steps" in RECIPES[args.recipe]:
        # such a recipe would override --steps and --ft-steps alike (study_cpu.build_config)
        print(f"error: {args.recipe}: the recipe fixes its own step count; use --steps/--ft-steps with its base "
              f"recipe", file=sys.stderr)
        return 2
    args.loo = args.loo or args.out / args.recipe
    report(study(args), args.results, args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
