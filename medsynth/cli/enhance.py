"""``medsynth-enhance``: classical X-ray enhancement of image files (:func:`medsynth.enhance.enhance_file`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from medsynth.cli.formatter import HelpFormatter
from medsynth.enhance import DENOISE_METHODS, SHARPEN_METHODS, STEPS, EnhanceConfig, enhance_file, preview_path
from medsynth.errors import InputError, exit_on_error
from medsynth.image2d import format_of
from medsynth.io import check_output, find_files, stem_of, suffix_of

__all__ = ["OUTPUT_FORMATS", "build_parser", "main"]

OUTPUT_FORMATS: tuple[str, ...] = ("same", "png", "jpg", "tif", "dcm", "nii.gz")


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-enhance``."""
    p = argparse.ArgumentParser(
        prog="medsynth-enhance",
        description="Enhance 2-D X-rays (PNG, JPEG, TIFF, DICOM) with a chain of classical filters. Prints one "
                    "JSON line per image with contrast, entropy and edge strength before and after.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("input", help="image file, or a folder (searched recursively)")
    p.add_argument("output", help="output file; its suffix picks the format (.png .jpg .tif .dcm .nii.gz); "
                                  "a folder when INPUT is a folder")
    p.add_argument("--steps", default="clahe", help=f"comma-separated, applied in order: {', '.join(STEPS)}")
    p.add_argument("--clahe-clip", type=float, default=0.01, help="CLAHE clip limit")
    p.add_argument("--clahe-tile", type=int, default=None, help="CLAHE tile size in pixels (default: 1/8 of the image)")
    p.add_argument("--denoise-method", default="nlmeans", choices=DENOISE_METHODS, help="denoising filter")
    p.add_argument("--denoise-strength", type=float, default=1.0, help="multiple of the estimated noise level")
    p.add_argument("--sharpen-method", default="unsharp", choices=SHARPEN_METHODS, help="sharpening filter")
    p.add_argument("--sharpen-amount", type=float, default=1.0,
                   help="how much of the sharpened detail is added (0: no change)")
    p.add_argument("--sharpen-radius", type=float, default=2.0, help="unsharp-mask radius in pixels")
    p.add_argument("--gamma", type=float, default=0.8, help="exponent of the gamma step (< 1 brightens, > 1 darkens)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=None,
                   help="bits of PNG/TIFF/DICOM output (default: the input's); NIfTI is always float32")
    p.add_argument("--format", default="same", choices=OUTPUT_FORMATS,
                   help="output format for folder input (default: same, each input's own)")
    p.add_argument("--preview", action="store_true",
                   help="also write <output stem>_preview.png: before | after, 8-bit")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def _output_name(name: str, fmt: str) -> str:
    return name if fmt == "same" else f"{stem_of(name)}.{fmt}"


def _plan(source: Path, target: Path, fmt: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file, or a folder mirrored into the output folder."""
    if source.is_dir():
        if target.exists() and not target.is_dir():
            raise InputError(target, "INPUT is a folder, so OUTPUT must be a folder, not a file")
        files = find_files([source], what="image2d")
        return [(f, target / f.relative_to(source).parent / _output_name(f.name, fmt)) for f in files]
    if not source.exists():
        raise InputError(source, "no such file or folder")
    if target.is_dir():
        return [(source, target / _output_name(source.name, fmt))]
    return [(source, target)]


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-enhance INPUT OUTPUT [--steps clahe,denoise,sharpen] ...``; returns the exit status."""
    args = build_parser().parse_args(argv)
    config = EnhanceConfig(
        steps=args.steps, clahe_clip=args.clahe_clip, clahe_tile=args.clahe_tile,
        denoise_method=args.denoise_method, denoise_strength=args.denoise_strength,
        sharpen_method=args.sharpen_method, sharpen_amount=args.sharpen_amount,
        sharpen_radius=args.sharpen_radius, gamma=args.gamma,
    )
    source, target = Path(args.input), Path(args.output)
    plan = _plan(source, target, args.format)
    for src, out in plan:  # refuse before any work is done
        if format_of(out) is None and suffix_of(out) not in (".nii", ".nii.gz"):
            raise InputError(out, "unsupported output type; use .png, .jpg, .tif, .dcm, .nii or .nii.gz")
        if format_of(out) == "jpeg" and args.bit_depth == 16:
            raise InputError(out, "JPEG stores 8 bits; use .png or .tif for 16-bit output")
        check_output(out, [src], args.overwrite)
        if args.preview:
            check_output(preview_path(out), [src], args.overwrite)

    from tqdm import tqdm  # ~45 ms of imports: not for --help

    for src, out in tqdm(plan, desc="enhance", unit="image", disable=len(plan) < 2, file=sys.stderr):
        record = enhance_file(src, out, config, bit_depth=args.bit_depth, preview=args.preview)
        print(json.dumps(record), flush=True)
    return 0
