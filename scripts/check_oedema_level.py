"""How bright each patient's real oedema is, and how bright the fold models render it, seen and unseen (T1 -> T2).

For each fold model of a leave-one-out run (one folder per held-out patient, ``RUN/<patient>/model.pt``) and each
shared patient, the mean level inside the oedema (label 1), the core (label 2) and the white matter (the brain
outside the lesion above its T1's 0.6 quantile) of the real T2, the model's translation and its base (the fair
baseline: the inverted histogram match the network corrects), each image normalised to [0, 1] over the brain as
``medsynth-eval`` does. A patient is ``unseen`` by the fold that held it out and ``seen`` by the other two. For a
seen patient, ``taught`` is the level of the target the fold's losses compared with: its T2 matched onto the fold's
pooled T2 histogram (``--target-norm histogram``), or as normalised alone (``percentile``: the real level, up to
the brain mask).
A reading aid for the lesion studies, not a score: the studies' PSNR and bias are in ``scripts/results``.

usage: python scripts/check_oedema_level.py --run RUNS/ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052
Prints a table and writes scripts/results/<--name, default check_oedema_level>_<kind>.json (machine, versions,
figures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from medsynth.benchmark import machine, table, write_json  # noqa: E402
from medsynth.config import TrainConfig  # noqa: E402
from medsynth.evaluation import normalise_in_mask  # noqa: E402
from study_cpu import DATA, cases, held_out_case  # noqa: E402

#: the brain outside the lesion above this quantile of its T1 is white matter (a T1's brightest part). Stricter
#: than the synthetic lesions' 0.55 (``medsynth.lesions.WHITE_QUANTILE``, which places blobs per slice): a level
#: read over a whole volume should hold white matter only, not its border with grey matter
WHITE_QUANTILE = 0.6


class Patient(NamedTuple):
    """What :func:`levels` reads of a patient once, whichever fold model converts it."""

    t1: Any
    t2: Any
    brain: np.ndarray
    #: region name -> its voxels inside the brain (only the regions the patient has)
    where: dict[str, np.ndarray]
    #: region name -> the real T2's mean normalised level there
    real: dict[str, float]


def taught(config: TrainConfig, stats: dict[str, Any], read: dict[str, Patient]) -> dict[str, dict[str, float]]:
    """The mean normalised level, per seen patient and region, of the T2 target a fold model's losses compared with.

    Args:
        config: the fold model's TrainConfig (its training T2s, ``b``, and ``target_norm``).
        stats: the model's domain statistics: the T2's pooled quantiles, onto which training matched its targets.
        read: what :func:`levels` read of each patient (its brain, regions and real T2).

    Empty where the target is not rebuilt here: no residual generator (its targets are the T2s as normalised alone,
    the real levels), N4-corrected or enhanced volumes (the files are not what training compared with)."""
    import torch

    from medsynth.intensity import intensity_stats, normalise
    from medsynth.networks import histogram_match

    if config.model.residual != "invert" or config.bias_correction != "none" or config.enhance:
        return {}
    pooled = torch.tensor(stats[config.names[1]]["quantiles"], dtype=torch.float32)
    out = {}
    for f in (Path(f) for f in config.b):
        if f.parent.name not in read:
            continue
        patient = read[f.parent.name]
        # on the file's own grid: training's prepared volume differs only by orientation, and both maps act on values
        t2 = patient.t2.array
        x = normalise(torch.as_tensor(t2, dtype=torch.float32), intensity_stats(t2))
        target = histogram_match(x[None], pooled)[0] if config.target_norm == "histogram" else x
        level = normalise_in_mask(target.numpy(), patient.brain)
        out[f.parent.name] = {r: float(level[w].mean()) for r, w in patient.where.items()}
    return out


def levels(run: Path, patients: list[Path]) -> list[dict[str, Any]]:
    """One row per fold model x patient x region: the mean normalised level of the real T2, the model and the base,
    and for a seen patient the target the fold was taught (``taught``; None where unseen or not rebuilt)."""
    from medsynth.inference import Translator, fair_baseline_translator

    # what does not depend on the fold model, once per patient: its T1, the regions and the real T2's levels
    read: dict[str, Patient] = {}
    for p in patients:
        t1, t2, regions = held_out_case(p)
        brain = regions["brain"]
        white = brain & ~regions["lesion"] & (t1.array > np.quantile(t1.array[brain], WHITE_QUANTILE))
        where = {r: w & brain for r, w in (("oedema", regions["oedema"]), ("core", regions["core"]),
                                           ("white matter", white)) if (w & brain).any()}
        real = normalise_in_mask(t2.array, brain)
        read[p.name] = Patient(t1, t2, brain, where, {r: float(real[w].mean()) for r, w in where.items()})
    rows = []
    for fold in patients:
        model_path = run / fold.name / "model.pt"
        model = Translator.from_file(model_path, device="cpu")
        base = fair_baseline_translator(model_path, device="cpu")
        targets = taught(model.config, model.stats, read)
        for name, patient in read.items():
            t1 = patient.t1
            images = {"model": model.translate_array(t1.array, t1.affine, "t1-to-t2"),
                      "base": base.translate_array(t1.array, t1.affine, "t1-to-t2")}
            normalised = {k: normalise_in_mask(v, patient.brain) for k, v in images.items()}
            for region, w in patient.where.items():
                rows.append({"fold": fold.name, "patient": name, "seen": name != fold.name, "region": region,
                             "real": patient.real[region], **{k: float(v[w].mean()) for k, v in normalised.items()},
                             "taught": targets.get(name, {}).get(region) if name != fold.name else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a leave-one-out run: one folder per held-out patient")
    p.add_argument("--data", type=Path, default=DATA, help="the shared patients (default: %(default)s)")
    p.add_argument("--name", default="check_oedema_level", help="results file name (default: %(default)s)")
    args = p.parse_args(argv)
    patients = cases(args.data) if args.data.is_dir() else []
    if not patients:
        print(f"error: {args.data}: no patients (folders with t1.nii.gz and t2.nii.gz)", file=sys.stderr)
        return 2
    # every fold model before any conversion: a missing one would otherwise stop the run folds later
    missing = [p.name for p in patients if not (args.run / p.name / "model.pt").is_file()]
    if missing:
        print(f"error: {args.run}: no fold model (<patient>/model.pt) for {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = levels(args.run, patients)
    if not rows:
        print(f"error: {args.data}: no patient has a lesion mask with an oedema, a core or white matter",
              file=sys.stderr)
        return 2
    shown = [{"patient": r["patient"], "fold model": r["fold"], "seen": "seen" if r["seen"] else "UNSEEN",
              "region": r["region"], "real T2": round(r["real"], 3),
              "taught": "-" if r["taught"] is None else round(r["taught"], 3), "model": round(r["model"], 3),
              "base": round(r["base"], 3)} for r in rows]
    print(table(shown, list(shown[0])))
    path = write_json(args.name, {
        "machine": machine(), "run": str(args.run), "white_quantile": WHITE_QUANTILE,
        "normalisation": "each image to [0, 1] by its 0.5/99.5 percentiles over the brain", "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
