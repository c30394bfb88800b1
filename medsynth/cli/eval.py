"""``medsynth-eval``: score translated images against references (:func:`medsynth.evaluation.evaluate`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from medsynth.cli.formatter import HelpFormatter
from medsynth.errors import InputError, exit_on_error
from medsynth.evaluation import evaluate, format_table

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-eval``."""
    parser = argparse.ArgumentParser(
        prog="medsynth-eval",
        description="Score translated images against references: PSNR, SSIM and MAE inside a mask "
        "(SynthRAD HU metrics too for CT), and the classical baseline when --source is given. "
        "Files are paired by case name: 'BraTS-001_t2.nii.gz' and 'BraTS-001/t2.nii.gz' are case BraTS-001.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--pred", nargs="+", required=True, metavar="SRC", help="predictions: files, folders, globs")
    parser.add_argument("--ref", nargs="+", required=True, metavar="SRC", help="references of the target contrast")
    parser.add_argument("--source", nargs="+", metavar="SRC", help="source images: also score the baseline")
    parser.add_argument("--model", metavar="MODEL",
                        help="the model that made the predictions: with --source, also score the fair baseline "
                             "(the source inverted and matched to the training histogram the model carries); "
                             "'default' is the packaged model")
    parser.add_argument("--direction", help="the model's direction, e.g. t1-to-t2 (default: its first)")
    parser.add_argument("--mask", nargs="+", metavar="SRC", help="masks (default: reference & source foreground)")
    parser.add_argument("--labels", nargs="+", metavar="SRC",
                        help="label maps (e.g. lesion masks: integer labels, 0 none), paired by case like --mask: "
                             "also score inside each label of the mask, for the prediction and the baselines "
                             "(columns <label>_psnr/ssim/mae/bias, baseline_<label>_psnr, ...; bias: mean prediction - reference, "
                             "negative where a lesion comes out too dark)")
    parser.add_argument("--label-names", metavar="NAMES",
                        help="names of the label values: 1=oedema,2=core, or a JSON/CSV file (default: labels.json "
                             "or labels.csv beside the label maps, else label1, label2, ...)")
    parser.add_argument("--out", metavar="REPORT_DIR", help="write metrics.csv, metrics.json and a PNG per case (default: print the table only)")
    parser.add_argument(
        "--ct",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="target is CT in HU: add SynthRAD HU metrics (default: detect, reference below -500)",
    )
    return parser


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-eval``: print a metrics table, and write a report folder with ``--out``."""
    args = build_parser().parse_args(argv)
    if args.label_names is not None and args.labels is None:
        raise InputError("--label-names", "names label maps: give them with --labels")
    rows = evaluate(
        args.pred,
        args.ref,
        source=args.source,
        mask=args.mask,
        out_dir=args.out,
        ct=args.ct,
        model=args.model,
        direction=args.direction,
        labels=args.labels,
        label_names=args.label_names,
        argv=list(sys.argv[1:] if argv is None else argv),
    )
    print(format_table(rows))
    if args.out:
        print(f"report: {Path(args.out) / 'metrics.csv'}, metrics.json and {len(rows)} PNG(s)")
    return 0
