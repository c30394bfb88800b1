"""``python -m medsynth bundle``: a model as a MONAI bundle (:func:`medsynth.bundle.export_bundle`)."""

from __future__ import annotations

import argparse
from typing import Sequence

from medsynth.cli.formatter import HelpFormatter
from medsynth.errors import exit_on_error

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``python -m medsynth bundle``."""
    p = argparse.ArgumentParser(
        prog="python -m medsynth bundle",
        description="Write a model as a MONAI bundle (configs/metadata.json, configs/inference.json, "
                    "models/model.pt, docs/README.md, LICENSE) that MONAI's runner translates files with: "
                    "python -m monai.bundle run --config_file OUT_DIR/configs/inference.json "
                    "--input_path IN.nii.gz --output_path OUT.nii.gz",
        formatter_class=HelpFormatter)
    p.add_argument("out_dir", help="the bundle's folder (new or empty, or an earlier bundle with --overwrite)")
    p.add_argument("--model", default=None, help="model.pt or a run folder (default: the packaged T1<->T2 model)")
    p.add_argument("--direction", default=None, help="the bundle's direction, e.g. t1-to-t2 "
                                                     "(default: the model's first)")
    p.add_argument("--bundle-version", default="0.1.0", help="the bundle's version (metadata.json)")
    p.add_argument("--authors", default="medsynth contributors", help="authors and copyright holder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier bundle in out_dir")
    return p


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medsynth bundle OUT_DIR``: write a MONAI bundle."""
    args = build_parser().parse_args(argv)
    from medsynth.bundle import export_bundle  # torch and MONAI: not for --help

    out = export_bundle(args.out_dir, args.model, args.direction, args.bundle_version, args.authors,
                        args.overwrite)
    print(f"wrote {out}; run it with: python -m monai.bundle run --config_file {out / 'configs' / 'inference.json'}"
          f" --input_path IN.nii.gz --output_path OUT.nii.gz")
    return 0
