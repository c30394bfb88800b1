"""Command-line entry points: thin wrappers over the Python API.

Heavy modules (torch, MONAI) are imported inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from medsynth.errors import InputError

if TYPE_CHECKING:
    import argparse

Main = Callable[[Sequence[str] | None], int]


def exit_on_error(main: Main) -> Main:
    """Turn :class:`InputError` into ``error: <path>: <problem>`` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return wrapper


def _domain_names(text: str) -> tuple[str, str]:
    names = tuple(n.strip().lower() for n in text.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise InputError("--names", f"{text!r}: give two different domain names, e.g. t1,t2 or mr,ct")
    return names  # type: ignore[return-value]


def train_parser() -> "argparse.ArgumentParser":
    """Options of ``medsynth-train``; defaults are the reference CycleGAN's."""
    import argparse

    from medsynth.config import AXES, GENERATORS, ModelConfig, TrainConfig

    d, m = TrainConfig(), ModelConfig()
    p = argparse.ArgumentParser(
        prog="medsynth-train",
        description="Train a 2D slice-wise CycleGAN on two unpaired sets of volumes or 2D images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--t1", nargs="+", metavar="SRC", help="T1 volumes: folders (recursive), globs or files")
    g.add_argument("--t2", nargs="+", metavar="SRC", help="T2 volumes")
    g.add_argument("--a", nargs="+", metavar="SRC", help="first domain (generic form, with --names)")
    g.add_argument("--b", nargs="+", metavar="SRC", help="second domain")
    g.add_argument("--names", default=None, help="domain names for --a/--b, e.g. mr,ct (default t1,t2)")
    g.add_argument("--out", required=True, help="run folder (checkpoints, samples, tensorboard, model.pt)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (its inputs and options are kept)")
    g.add_argument("--axis", choices=AXES, default=d.axis, help="slicing axis (after reorientation to RAS)")
    g.add_argument("--size", type=int, default=d.size, help="slices are padded or cropped (never resized) to this")
    g.add_argument("--min-foreground", type=float, default=d.min_foreground,
                   help="skip slices whose foreground is below this fraction of the fullest slice's")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random affine augmentation")
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no random left-right flips")
    g.add_argument("--enhance", default="", help="enhancement steps applied to the inputs, e.g. clahe,denoise")
    g.add_argument("--val-t1", "--val-a", dest="val_a", nargs="+", metavar="SRC", default=[],
                   help="paired validation: source-domain volumes (matched to --val-t2 by case)")
    g.add_argument("--val-t2", "--val-b", dest="val_b", nargs="+", metavar="SRC", default=[],
                   help="paired validation: target-domain volumes")
    g.add_argument("--val-every", type=int, default=d.val_every, help="steps between validation rounds")
    g.add_argument("--cache-dir", default=None, help="persist preprocessed volumes here (MONAI PersistentDataset)")
    n = p.add_argument_group("networks")
    n.add_argument("--generator", choices=GENERATORS, default=m.generator)
    n.add_argument("--ngf", type=int, default=m.ngf, help="generator filters in the first layer")
    n.add_argument("--ndf", type=int, default=m.ndf, help="discriminator filters in the first layer")
    n.add_argument("--n-layers-d", type=int, default=m.n_layers_d, help="PatchGAN layers (3: 70x70 patches)")
    n.add_argument("--norm", choices=("instance", "batch"), default=m.norm)
    n.add_argument("--dropout", type=float, default=m.dropout, help="dropout in the ResNet blocks")
    n.add_argument("--upsample", choices=("transpose", "nearest"), default=m.upsample,
                   help="ResNet upsampling: transposed convolution (reference) or nearest + convolution")
    n.add_argument("--init-gain", type=float, default=d.init_gain, help="std of the N(0, gain) initialisation")
    o = p.add_argument_group("objective and schedule")
    o.add_argument("--steps", type=int, default=d.steps, help="iterations at the initial learning rate")
    o.add_argument("--decay-steps", type=int, default=d.decay_steps, help="iterations of linear decay to zero")
    o.add_argument("--batch-size", type=int, default=d.batch_size)
    o.add_argument("--lr", type=float, default=d.lr)
    o.add_argument("--beta1", type=float, default=d.beta1)
    o.add_argument("--beta2", type=float, default=d.beta2)
    o.add_argument("--lambda-cycle", type=float, default=d.lambda_cycle)
    o.add_argument("--lambda-identity", type=float, default=d.lambda_identity,
                   help="identity loss weight, as a fraction of --lambda-cycle")
    o.add_argument("--pool-size", type=int, default=d.pool_size, help="image pool of generated images (0: none)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu or cuda")
    r.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster on GPUs)")
    r.add_argument("--compile", action="store_true", help="torch.compile the networks")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes")
    r.add_argument("--log-every", type=int, default=d.log_every, help="steps between loss logs")
    r.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between PNG sample grids")
    r.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    r.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@exit_on_error
def train_main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-train``: train a CycleGAN and write ``RUN_DIR/model.pt``."""
    args = train_parser().parse_args(argv)
    from medsynth.config import ModelConfig, TrainConfig

    generic = args.a is not None or args.b is not None
    if generic and (args.t1 or args.t2):
        raise InputError("--a/--b", "use either --t1/--t2 or --a/--b with --names, not both")
    a, b = (args.a, args.b) if generic else (args.t1, args.t2)
    if (not a or not b) and not args.resume:
        raise InputError("--t1/--t2" if not generic else "--a/--b", "both domains are needed")
    names = _domain_names(args.names) if args.names else ("t1", "t2")
    config = TrainConfig(
        a=list(a or []), b=list(b or []), names=names, out=args.out,
        model=ModelConfig(generator=args.generator, ngf=args.ngf, ndf=args.ndf, n_layers_d=args.n_layers_d,
                          norm=args.norm, dropout=args.dropout, upsample=args.upsample),
        size=args.size, axis=args.axis, min_foreground=args.min_foreground, steps=args.steps,
        decay_steps=args.decay_steps, batch_size=args.batch_size, lr=args.lr, beta1=args.beta1, beta2=args.beta2,
        lambda_cycle=args.lambda_cycle, lambda_identity=args.lambda_identity, pool_size=args.pool_size,
        init_gain=args.init_gain, augment=args.augment, flip=args.flip,
        enhance=[s for s in args.enhance.split(",") if s], seed=args.seed, device=args.device, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, workers=args.workers, cache_dir=args.cache_dir,
        log_every=args.log_every, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, val_a=args.val_a, val_b=args.val_b, val_every=args.val_every)
    if config.enhance:
        from medsynth.enhance import STEPS

        unknown = [s for s in config.enhance if s not in STEPS]
        if unknown:
            raise InputError("--enhance", f"unknown steps {', '.join(unknown)}: use {', '.join(STEPS)}")
    from medsynth.training import Interrupted, train

    try:
        runtime = _given_runtime_options(argv) if args.resume else ()
        model = train(config, resume=args.resume, progress=not args.quiet, runtime=runtime)
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 130
    print(f"model written to {model}")
    return 0


def _given_runtime_options(argv: Sequence[str] | None) -> list[str]:
    """The runtime options (see ``medsynth.training.RUNTIME_OPTIONS``) given on this command line: on
    ``--resume`` only these replace the run's saved values, not the parser's defaults."""
    import argparse

    from medsynth.training import RUNTIME_OPTIONS

    parser = train_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    return [key for key in RUNTIME_OPTIONS if key in given]


def convert_parser() -> "argparse.ArgumentParser":
    """Options of ``medsynth-convert``."""
    import argparse

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
    p.add_argument("--dtype", choices=("float32", "input"), default="float32",
                   help="output voxel type: float32, or the input's own (rounded and clipped)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator")
    p.add_argument("--progress", choices=("bar", "lines", "none"), default="bar",
                   help="tqdm bars, or 'PROGRESS <percent>' lines on stdout for other programs")
    return p


@exit_on_error
def convert_main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-convert``: translate one file, or a folder of files."""
    args = convert_parser().parse_args(argv)
    from pathlib import Path

    from medsynth.io import find_files

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
    from medsynth.inference import Translator

    if args.batch_size is not None and args.batch_size < 1:
        raise InputError("--batch-size", f"{args.batch_size} must be at least 1")
    device = args.device
    if device == "cuda" or (device == "auto" and dist_world > 1):
        # under torchrun each rank takes its own GPU
        import os

        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    translator = Translator.from_file(args.model, device=device, batch_size=args.batch_size, compile=args.compile)
    translator._resolve_direction(args.direction)
    reporter = _Reporter(args.progress, len(inputs))
    if single:
        out = translator.translate_file(source, args.output, args.direction, args.axis, args.fuse, args.dtype,
                                        args.overwrite, progress=reporter.slices)
        reporter.close()
        if args.progress == "lines":
            print(f"DONE {out}", flush=True)
        elif args.progress == "bar":
            print(f"wrote {out}", file=sys.stderr)
        return 0
    failures = translator.translate_files(inputs, args.output, args.direction, args.axis, args.fuse, args.dtype,
                                          args.overwrite, progress=reporter.slices, on_done=reporter.file_done)
    reporter.close()
    done = len(inputs) - len(failures)
    print(f"converted {done} of {len(inputs)} files into {args.output}", file=sys.stderr)
    for path, problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if failures else 0


def _rank_and_world() -> tuple[int, int]:
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _Reporter:
    """Progress over files and slices: tqdm bars, ``PROGRESS <percent>`` lines, or nothing."""

    def __init__(self, mode: str, n_files: int) -> None:
        self.mode, self.n_files, self.files_done, self.last = mode, n_files, 0, -1
        self.files_bar = self.slices_bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            if n_files > 1:
                self.files_bar = tqdm(total=n_files, desc="files", unit="file", position=0)

    def slices(self, done: int, total: int) -> None:
        if self.mode == "bar":
            if self.slices_bar is None:
                from tqdm.auto import tqdm

                self.slices_bar = tqdm(total=total, desc="slices", unit="slice",
                                       position=1 if self.n_files > 1 else 0, leave=self.n_files == 1)
            if self.slices_bar.total != total or done < self.slices_bar.n:
                self.slices_bar.reset(total=total)
            self.slices_bar.update(done - self.slices_bar.n)
        elif self.mode == "lines":
            percent = int(100 * (self.files_done + done / max(total, 1)) / max(self.n_files, 1))
            if percent != self.last:
                self.last = percent
                print(f"PROGRESS {percent}", flush=True)

    def file_done(self, path: object, out: object, problem: str | None) -> None:
        self.files_done += 1
        if self.files_bar is not None:
            self.files_bar.update(1)

    def close(self) -> None:
        for bar in (self.slices_bar, self.files_bar):
            if bar is not None:
                bar.close()


@exit_on_error
def demo_main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-demo OUT_DIR``: the packaged sample T1 translated to T2 by the packaged model, with a preview."""
    import argparse

    p = argparse.ArgumentParser(prog="medsynth-demo", description=demo_main.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", nargs="?", default="medsynth-demo", help="folder for the NIfTI files and preview.png")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal", "all"), default="axial")
    p.add_argument("--model", default=None, help="another model.pt instead of the packaged one")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo")
    args = p.parse_args(argv)
    from medsynth.demo import run_demo

    reporter = _Reporter("bar", 1)
    result = run_demo(args.out_dir, device=args.device, axis=args.axis, model=args.model, overwrite=args.overwrite,
                      progress=reporter.slices)
    reporter.close()
    print(f"translated {result['input']} -> {result['output']} in {result['seconds']:.1f} s on {result['device']}")
    print(f"preview: {result['preview']}")
    return 0
