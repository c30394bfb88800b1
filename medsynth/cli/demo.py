"""``medsynth-demo``: the packaged sample translated by the packaged model (:func:`medsynth.demo.run_demo`)."""

from __future__ import annotations

import argparse
from typing import Sequence

from medsynth.cli.formatter import HelpFormatter
from medsynth.cli.progress import Reporter
from medsynth.config import AXIS_CHOICES
from medsynth.errors import exit_on_error
from medsynth.fusion import DEFAULT_FUSION, FUSIONS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-demo``."""
    p = argparse.ArgumentParser(prog="medsynth-demo", description=main.__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("out_dir", nargs="?", default="medsynth-demo", help="folder for the NIfTI files and preview.png")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--axis", choices=AXIS_CHOICES, default="axial",
                   help="slicing axis; all = the three axes fused")
    p.add_argument("--fuse", choices=FUSIONS, default=DEFAULT_FUSION,
                   help="how --axis all combines its three passes (as medsynth-convert --fuse)")
    p.add_argument("--model", default=None, help="another model.pt (default: the packaged one)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo")
    return p


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-demo OUT_DIR``: the packaged sample T1 translated to T2 by the packaged model, with a preview."""
    args = build_parser().parse_args(argv)
    from medsynth.demo import run_demo  # torch and MONAI: not for --help

    reporter = Reporter("bar", 1)
    result = run_demo(args.out_dir, device=args.device, axis=args.axis, model=args.model, overwrite=args.overwrite,
                      progress=reporter.slices, fuse=args.fuse)
    reporter.close()
    print(f"translated {result['input']} -> {result['output']} in {result['seconds']:.1f} s on {result['device']}")
    print(f"preview: {result['preview']}")
    for note in result["notes"]:
        print(f"note: {note}")
    return 0
