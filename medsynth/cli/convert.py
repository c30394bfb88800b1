"""``medsynth-convert``: translate files with a trained model (:class:`medsynth.inference.Translator`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from medsynth.bias import BIAS_OUTPUTS
from medsynth.cli.formatter import HelpFormatter
from medsynth.cli.progress import Reporter
from medsynth.config import AXIS_CHOICES
from medsynth.errors import InputError, exit_on_error
from medsynth.fusion import DEFAULT_FUSION, FUSIONS
from medsynth.io import KIND_NAMES, check_output, find_files, kind_of

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-convert``."""
    p = argparse.ArgumentParser(
        prog="medsynth-convert",
        description="Translate volumes (or 2D images) into the other contrast, keeping their geometry.",
        formatter_class=HelpFormatter)
    p.add_argument("input", help="a file, a folder (searched recursively) or a glob pattern")
    p.add_argument("output", help="a file with a known extension (for one input file; e.g. .nii.gz, .png), or a "
                                  "folder (same file names)")
    p.add_argument("--model", default=None, help="model.pt or a run folder (default: the packaged T1<->T2 model)")
    p.add_argument("--direction", default=None, help="e.g. t1-to-t2 (default: the model's first direction)")
    p.add_argument("--axis", choices=AXIS_CHOICES, default="axial",
                   help="slicing axis; all = the three axes fused; a 2D image is translated in its own plane")
    p.add_argument("--fuse", choices=FUSIONS, default=DEFAULT_FUSION,
                   help="how --axis all combines its three passes: mean or median voxel by voxel, or detail (the "
                        "axial pass, with only the detail across slices from the coronal and sagittal ones)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: 4 on a CPU, 64 on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on CUDA and on CPUs with native bf16 (avx512_bf16, AMX), fp32 elsewhere")
    p.add_argument("--no-crop", dest="crop", action="store_false",
                   help="translate whole slices, not only the box around the foreground (slower; same result "
                        "outside it). Without it: the box only")
    p.add_argument("--no-calibration", dest="calibration", action="store_false",
                   help="skip the model's output calibration curve (medsynth-calibrate), if it carries one: the "
                        "network's output as it is")
    p.add_argument("--bias-field", choices=BIAS_OUTPUTS, default="restore",
                   help="with a model trained on bias-corrected volumes (medsynth-train --bias-correction n4 or "
                        "n4-peak): the input is corrected before translation, and restore (default) puts its field "
                        "back onto the result, as a real image of the same session has it; remove leaves the result "
                        "without it")
    p.add_argument("--dtype", choices=("float32", "input"), default="float32",
                   help="output voxel type: float32, or the input's own (rounded and clipped)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("--series", metavar="UID", default=None,
                   help="the SeriesInstanceUID to read from an input folder holding several DICOM series")
    p.add_argument("--to", choices=("dicom",), default=None,
                   help="dicom: write the translation as a new DICOM series (one file per slice) of the input's "
                        "study into the output folder; the input must be one DICOM series")
    p.add_argument("--luminance", action="store_true",
                   help="translate the luminance (BT.709 grey) of colour RGB/RGBA pictures; without it they are "
                        "refused, since models are single-channel (grey pictures stored as RGB are always taken)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator")
    p.add_argument("--progress", choices=("bar", "lines", "none"), default="bar",
                   help="tqdm bars, or 'PROGRESS <percent>' lines on stdout for other programs")
    return p


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-convert``: translate one file, or a folder of files."""
    args = build_parser().parse_args(argv)
    source = Path(args.input)
    # a folder holding one DICOM series (or an enhanced multi-frame file) is one volume, not a folder of inputs
    series_input = _is_series(source)
    single = source.is_file() or series_input
    inputs = [source] if single else find_files([args.input], what="any")
    dist_rank, dist_world = _rank_and_world()
    # every check that needs no model comes before loading one: a wrong name costs nothing and writes nothing
    _check_dicom_options(args, source, series_input)
    if single and args.to != "dicom":
        check_output(args.output, [source], args.overwrite)
    elif not single:
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(out_dir, "several inputs need an output folder, and this is a file")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError("--batch-size", f"{args.batch_size} must be at least 1")
    if series_input:
        from medsynth.io import load_image

        # a broken series (a gap, a corrupt file, several series) is refused before the model loads
        image = load_image(source, expect="volume", series=args.series)
    from medsynth.inference import Translator  # torch and MONAI: not for --help

    device = args.device
    if device == "cuda" or (device == "auto" and dist_world > 1):
        # under torchrun each rank takes its own GPU
        import torch  # not for --help

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    translator = Translator.from_file(args.model, device=device, batch_size=args.batch_size, compile=args.compile,
                                      precision=args.precision, threads=args.threads, crop=args.crop,
                                      calibrate=args.calibration, bias_field=args.bias_field)
    translator._resolve_direction(args.direction)
    outputs: list[Path] = []
    skipped = 0
    if not single:
        inputs = _fitting_inputs(translator, source, inputs)
        # under torchrun each rank takes every world-th file, its outputs placed from the whole list (a share
        # has another common folder), and leaves the outputs that exist (an earlier, interrupted job's)
        inputs, outputs, skipped = _my_share(inputs, Path(args.output), dist_rank, dist_world, args.overwrite)
    elif dist_rank > 0:
        return 0  # one file under torchrun: rank 0 translates it
    reporter = Reporter(args.progress, len(inputs))
    # the expected duration costs a short calibration of the network: not when nothing is shown
    on_start = reporter.expect if args.progress != "none" else None
    if single:
        if series_input:
            out = _convert_series(translator, image, args, reporter.slices, on_start)
        else:
            out = translator.translate_file(source, args.output, args.direction, args.axis, args.fuse, args.dtype,
                                            args.overwrite, progress=reporter.slices, on_start=on_start,
                                            luminance=args.luminance)
        reporter.close()
        if args.progress == "lines":
            print(f"DONE {out}", flush=True)
        elif args.progress == "bar":
            print(f"wrote {out}", file=sys.stderr)
        return 0
    failures = translator.translate_files(inputs, args.output, args.direction, args.axis, args.fuse, args.dtype,
                                          args.overwrite, progress=reporter.slices, on_done=reporter.file_done,
                                          on_start=on_start, luminance=args.luminance, outputs=outputs)
    reporter.close()
    counts = {"converted": len(inputs) - len(failures), "skipped": skipped, "failed": [p for _, p in failures]}
    return _summarise(args.output, counts, dist_world)


def _fitting_inputs(translator: Any, source: Path, inputs: list[Path]) -> list[Path]:
    """The inputs the model takes. A folder search keeps the files of the model's kind (a volume model skips the
    previews and screenshots beside the volumes, and the reverse); files named one by one or by a pattern must
    all fit.

    Raises:
        InputError: a named file of the other kind, or a folder with none of the model's kind.
    """
    kind = translator.image_kind
    if not source.is_dir() or not kind:
        for path in inputs:
            translator.check_input_path(path)
        return inputs
    fitting = [path for path in inputs if kind_of(path) == kind]
    if not fitting:
        raise InputError(source, f"no {KIND_NAMES[kind][2:]}s in this folder, and the model "
                                 f"{Path(translator.source).name} translates only those")
    return fitting


def _my_share(inputs: list[Path], output_dir: Path, rank: int, world: int,
              overwrite: bool) -> tuple[list[Path], list[Path], int]:
    """This rank's inputs and outputs (every ``world``-th from ``rank``), less those whose output exists (without
    ``overwrite``), and how many those were. An output that would replace its input stays, to fail there."""
    from medsynth.inference import output_paths

    # a DICOM series among the inputs (its folder, or an enhanced file) is written as NIfTI: named so before the
    # existence check, so that a job run again skips the series it already wrote
    outputs = [_series_output(i, o) for i, o in zip(inputs, output_paths(inputs, output_dir))]
    inputs, outputs = inputs[rank::world], outputs[rank::world]
    todo = [(i, o) for i, o in zip(inputs, outputs)
            if overwrite or not o.is_file() or (i.exists() and os.path.samefile(i, o))]
    return [i for i, _ in todo], [o for _, o in todo], len(inputs) - len(todo)


def _summarise(output: str, counts: dict[str, Any], world: int) -> int:
    """One summary of the whole job: under torchrun every rank's ``counts`` are gathered (torch.distributed, gloo)
    and rank 0 prints them; the others wait for it, since torchrun stops the rest of a job whose rank exits 2."""
    if world == 1:
        return _summary(output, [counts])
    import datetime

    import torch.distributed as dist

    # a rank that finishes early waits here for the slowest one: give it hours, not the default half hour
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, counts)
        status = _summary(output, everyone)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return status


def _summary(output: str, ranks: list[dict[str, Any]]) -> int:
    """Print one summary of the whole job (rank 0) and the failures; 2 (on every rank) if any file failed."""
    converted = sum(r["converted"] for r in ranks)
    skipped = sum(r["skipped"] for r in ranks)
    failed = [problem for r in ranks for problem in r["failed"]]
    if int(os.environ.get("RANK", 0)) == 0:
        total = converted + skipped + len(failed)
        shares = (f"; {len(ranks)} processes converted {' + '.join(str(r['converted']) for r in ranks)}"
                  if len(ranks) > 1 else "")
        print(f"converted {converted} of {total} files into {output} (skipped {skipped} existing, failed "
              f"{len(failed)}{shares})", file=sys.stderr)
        for problem in failed:
            print(f"error: {problem}", file=sys.stderr)
    return 2 if failed else 0


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (under torchrun; else 0 and 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _is_series(path: Path) -> bool:
    """A folder holding a DICOM series, or an enhanced multi-frame DICOM file: one volume."""
    from medsynth.dicom import is_multiframe, is_series_folder  # pydicom itself only when a file is read

    return is_series_folder(path) or is_multiframe(path)


def _series_output(source: Path, out: Path) -> Path:
    """A DICOM series' output name in a folder of outputs: ``<folder>.nii.gz`` (``<stem>.nii.gz`` for a file)."""
    if not _is_series(source):
        return out
    return out.with_name((out.stem if out.suffix.lower() in (".dcm", ".dicom", ".ima") else out.name) + ".nii.gz")


def _check_dicom_options(args: argparse.Namespace, source: Path, series_input: bool) -> None:
    """Refuse ``--series``/``--to dicom`` where they cannot apply, before any work.

    Raises:
        InputError: ``--to dicom`` or ``--series`` without one DICOM series as input, or an unusable output folder.
    """
    if args.series and not series_input:
        raise InputError(source, "--series picks a series in a folder of DICOM files, and this is not one")
    if args.to != "dicom":
        return
    if not series_input:
        raise InputError(source, "--to dicom needs one DICOM series as input (a folder of its files, or an enhanced "
                                 "multi-frame file): a DICOM output joins the input's patient, study and frame of "
                                 "reference, which other formats do not have (write .nii.gz instead); for a folder of "
                                 "several series, run it once per series")
    from medsynth.dicom import check_output_folder

    check_output_folder(args.output, [source], args.overwrite)


def _convert_series(translator: Any, image: Any, args: argparse.Namespace, progress: Any, on_start: Any) -> Path:
    """Translate one DICOM series (read as ``image``), written as a file, or with ``--to dicom`` as a new series of
    the same study described by the model and direction."""
    from medsynth.io import save_like

    translator.check_input(image)
    expect = None if on_start is None else (lambda seconds: on_start(image.path, seconds))
    out = translator.translate(image, args.direction, args.axis, args.fuse, progress, expect)
    if args.to != "dicom":
        return save_like(image, out.array, args.output, dtype=args.dtype, overwrite=args.overwrite)
    from medsynth.dicom import series_description, write_series

    _, src, dst = translator._resolve_direction(args.direction)
    model = Path(translator.source)
    name = model.parent.name if model.stem == "model" else model.stem
    return write_series(image, out.array, args.output,
                        description=series_description(image.native.description, dst, name),
                        derivation=f"medsynth synthetic {dst.upper()} translated from {src.upper()} series "
                                   f"{image.native.uid} ({image.native.description}) by model {model.name}, "
                                   f"direction {src}-to-{dst}, axis {args.axis}",
                        overwrite=args.overwrite)
