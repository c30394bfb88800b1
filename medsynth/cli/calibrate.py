"""``medsynth-calibrate``: fit a model's output calibration curve (:func:`medsynth.calibration.calibrate_model`)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from medsynth.cli.formatter import HelpFormatter
from medsynth.errors import exit_on_error
from medsynth.io import find_files

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-calibrate``."""
    p = argparse.ArgumentParser(
        prog="medsynth-calibrate",
        description="Fit a monotone curve that reshapes a model's output histogram in one direction toward real "
                    "volumes of the target contrast, and write the model with it under a new name (conversion then "
                    "applies it; medsynth-convert --no-calibration skips it). The sources and targets need not be "
                    "registered or of the same people: a site's own T1s and T2s will do.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help="model.pt or a run folder (default: the packaged T1<->T2 model)")
    p.add_argument("--direction", default=None, help="e.g. t1-to-t2 (default: the model's first direction)")
    p.add_argument("--source", nargs="+", required=True,
                   help="volumes of the direction's source contrast (files, folders or glob patterns)")
    p.add_argument("--target", nargs="+", required=True,
                   help="real volumes of the direction's target contrast (files, folders or glob patterns)")
    p.add_argument("--out", required=True, help="the calibrated model file (.pt); never the input model")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (never the input model)")
    p.add_argument("--progress", choices=("bar", "none"), default="bar", help="a tqdm bar over the volumes")
    return p


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-calibrate --source T1s --target T2s --out MODEL.pt``; returns the exit status."""
    args = build_parser().parse_args(argv)
    sources = find_files(args.source, what="volume")
    targets = find_files(args.target, what="volume")
    import numpy as np

    # torch and MONAI: not for --help
    from medsynth.calibration import calibrate_model
    from medsynth.curves import OutputCurve
    from medsynth.inference import read_model_file

    bar = None
    if args.progress == "bar":
        from tqdm import tqdm

        bar = tqdm(total=len(sources) + len(targets), unit="volume", desc="calibrate", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        out = calibrate_model(args.model, sources, targets, args.out, args.direction, args.device, args.overwrite,
                              progress)
    finally:
        if bar is not None:
            bar.close()
    for direction, data in read_model_file(out)["calibration"].items():
        curve = OutputCurve.from_dict(data)
        at = np.interp([0.1, 0.5, 0.9], curve.x, curve.y)
        print(f"{direction}: output at 10/50/90 % of its range -> {' / '.join(f'{v:.2f}' for v in at)} "
              f"({len(curve.sources)} source, {len(curve.targets)} target volumes)", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0
