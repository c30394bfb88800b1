"""``medsynth-convert``: translate files with a trained model (:class:`medsynth.inference.Translator`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from medsynth.cli.progress import Reporter
from medsynth.errors import InputError, exit_on_error
from medsynth.io import find_files

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-convert``."""
    p = argparse.ArgumentParser(
        prog="medsynth-convert",
        description="Translate volumes (or 2D images) into the other contrast, keeping their geometry.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="a file, a folder (searched recursively) or a glob pattern")
    p.add_argument("output", help="a file (for one input file) or a folder (same file names)")
    p.add_argument("--model", default=None, help="model.pt or a run folder (default: the packaged T1<->T2 model)")
    p.add_argument("--direction", default=None, help="e.g. t1-to-t2 (default: the model's first direction)")
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal", "all"), default="axial",
                   help="slicing axis; all = the three axes fused")
    p.add_argument("--fuse", choices=("mean", "median"), default="mean", help="fusion for --axis all")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default 8 CPU, 64 GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on CUDA and on CPUs with native bf16 (avx512_bf16, AMX), fp32 elsewhere")
    p.add_argument("--no-crop", dest="crop", action="store_false",
                   help="translate whole slices, not only the box around the foreground (same result outside it)")
    p.add_argument("--dtype", choices=("float32", "input"), default="float32",
                   help="output voxel type: float32, or the input's own (rounded and clipped)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator")
    p.add_argument("--progress", choices=("bar", "lines", "none"), default="bar",
                   help="tqdm bars, or 'PROGRESS <percent>' lines on stdout for other programs")
    return p


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-convert``: translate one file, or a folder of files."""
    args = build_parser().parse_args(argv)
    source = Path(args.input)
    single = source.is_file()
    inputs = [source] if single else find_files([args.input], what="any")
    dist_rank, dist_world = _rank_and_world()
    if not single:
        # under torchrun each rank takes every world-th file
        inputs = inputs[dist_rank::dist_world]
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(out_dir, "several inputs need an output folder, and this is a file")
    from medsynth.inference import Translator  # torch and MONAI: not for --help

    if args.batch_size is not None and args.batch_size < 1:
        raise InputError("--batch-size", f"{args.batch_size} must be at least 1")
    device = args.device
    if device == "cuda" or (device == "auto" and dist_world > 1):
        # under torchrun each rank takes its own GPU
        import torch  # not for --help

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    translator = Translator.from_file(args.model, device=device, batch_size=args.batch_size, compile=args.compile,
                                      precision=args.precision, threads=args.threads, crop=args.crop)
    translator._resolve_direction(args.direction)
    reporter = Reporter(args.progress, len(inputs))
    # the expected duration costs a short calibration of the network: not when nothing is shown
    on_start = reporter.expect if args.progress != "none" else None
    if single:
        out = translator.translate_file(source, args.output, args.direction, args.axis, args.fuse, args.dtype,
                                        args.overwrite, progress=reporter.slices, on_start=on_start)
        reporter.close()
        if args.progress == "lines":
            print(f"DONE {out}", flush=True)
        elif args.progress == "bar":
            print(f"wrote {out}", file=sys.stderr)
        return 0
    failures = translator.translate_files(inputs, args.output, args.direction, args.axis, args.fuse, args.dtype,
                                          args.overwrite, progress=reporter.slices, on_done=reporter.file_done,
                                          on_start=on_start)
    reporter.close()
    done = len(inputs) - len(failures)
    print(f"converted {done} of {len(inputs)} files into {args.output}", file=sys.stderr)
    for path, problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if failures else 0


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (under torchrun; else 0 and 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
