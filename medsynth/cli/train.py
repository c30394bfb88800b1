"""``medsynth-train``: train a 2D slice-wise CycleGAN (:func:`medsynth.training.train`) from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from medsynth.bias import BIAS_CORRECTIONS
from medsynth.config import (GENERATORS, LESION_SITES, RECIPES, RESIDUAL_INPUTS, RESIDUALS, TARGET_NORMS, TRAIN_AXES,
                             ModelConfig, TrainConfig, recipe_values)
from medsynth.cli.formatter import HelpFormatter
from medsynth.enhance import STEPS
from medsynth.errors import InputError, exit_on_error
from medsynth.io import find_files, kind_of_inputs

__all__ = ["build_parser", "main"]


def _domain_names(text: str) -> tuple[str, str]:
    names = tuple(n.strip().lower() for n in text.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise InputError("--names", f"{text!r}: give two different domain names, e.g. t1,t2 or mr,ct")
    return names  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-train``; defaults are the reference CycleGAN's."""
    d, m = TrainConfig(), ModelConfig()
    p = argparse.ArgumentParser(
        prog="medsynth-train",
        description="Train a 2D slice-wise CycleGAN on two unpaired sets of volumes or 2D images (or on registered "
                    "pairs with --paired). Without a GPU, options not given follow the CPU recipe (--recipe): "
                    + ", ".join(f"{k} {v}" for k, v in recipe_values("cpu", False).items())
                    + "; with --paired also " + ", ".join(f"{k} {v}" for k, v in recipe_values("cpu", True).items()
                                                          if k not in recipe_values("cpu", False))
                    + ". Each option's help gives the reference CycleGAN's default (used with a GPU) and, where it "
                      "differs, the CPU recipe's.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--t1", nargs="+", metavar="SRC", help="T1 volumes, or 2D images: folders (recursive), globs or files")
    g.add_argument("--t2", nargs="+", metavar="SRC", help="T2 volumes (or 2D images; the same kind as --t1)")
    g.add_argument("--a", nargs="+", metavar="SRC", help="first domain (generic form, with --names): volumes or 2D images, as --t1")
    g.add_argument("--b", nargs="+", metavar="SRC", help="second domain (the same kind of images as --a)")
    g.add_argument("--names", default=None, help="domain names for --a/--b, e.g. mr,ct (default: t1,t2)")
    g.add_argument("--out", required=True, help="run folder (checkpoints, samples, tensorboard, model.pt)")
    g.add_argument("--init", metavar="MODEL",
                   help="start both generators (and each domain's intensity statistics) from this model.pt, run "
                        "folder, or 'default' (the packaged model), e.g. to adapt it to a site's own pairs in "
                        "minutes; network options not given are the model's")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (its inputs and options are kept)")
    g.add_argument("--axis", choices=TRAIN_AXES, default=d.axis,
                   help="slicing axis (after reorientation to RAS); all: each sample along a random one of the three "
                        "(multi-planar), which serves convert's --axis all")
    g.add_argument("--size", type=int, default=d.size, help="slices are padded or cropped (never resized) to this")
    g.add_argument("--min-foreground", type=float, default=d.min_foreground,
                   help="skip slices whose foreground is below this fraction of the fullest slice's")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off the random affine augmentation of training slices (on without this switch)")
    g.add_argument("--no-flip", dest="flip", action="store_false",
                   help="turn off the random left-right flips of training slices (on without this switch)")
    g.add_argument("--enhance", default="",
                   help=f"enhancement steps applied to the inputs, e.g. clahe,denoise; of {', '.join(STEPS)} "
                        "(default: none)")
    g.add_argument("--bias-correction", choices=BIAS_CORRECTIONS, default=d.bias_correction,
                   help="n4: divide every volume by its N4 bias field before training, and (the model records it) "
                        "every input before conversion; n4-peak: the same with the field fitted on the voxels of "
                        "the histogram's main peak only, so that a large lesion stays out of it (default: none; 2D "
                        "images are never corrected)")
    g.add_argument("--paired", action="store_true",
                   help="the two sets are registered pairs, matched by case name (same shape and affine): both "
                        "images of a pair get the same slice and augmentation, and --lambda-paired x L1 joins the "
                        "objective")
    g.add_argument("--intensity-augment", action=argparse.BooleanOptionalAction, default=d.intensity_augment,
                   help="random bias field, gamma, histogram shift and noise on the inputs")
    g.add_argument("--augment-base", action=argparse.BooleanOptionalAction, default=d.augment_base,
                   help="with --intensity-augment and --residual invert: the bias field and noise also reach the "
                        "base the network sees (re-derived from the augmented image), as they would at conversion")
    g.add_argument("--lesion-augment", type=float, default=d.lesion_augment, metavar="P",
                   help="--paired: probability that a training pair gets synthetic tumour-like lesions (oedema "
                        "moderately dark in T1 and bright in T2, some with a T1-bright core)")
    g.add_argument("--lesion-radius", type=float, nargs=2, default=list(d.lesion_radius), metavar=("MIN", "MAX"),
                   help="smallest and largest semi-axis of a synthetic oedema blob in pixels of the training slices; "
                        "one to three overlapping blobs make a lesion (default: %(default)s)")
    g.add_argument("--lesion-site", choices=LESION_SITES, default=d.lesion_site,
                   help="where synthetic lesions go: anywhere in the brain, or centred in the white matter of the "
                        "first domain and shaped by it, as vasogenic oedema is (default: %(default)s)")
    g.add_argument("--unpaired-t1", "--unpaired-a", dest="extra_a", nargs="+", metavar="SRC", default=[],
                   help="--paired: more first-domain volumes without partners (e.g. healthy T1s of other people); "
                        "they teach through the adversarial and cycle terms only, so give --lambda-adv or "
                        "--lambda-cycle")
    g.add_argument("--unpaired-t2", "--unpaired-b", dest="extra_b", nargs="+", metavar="SRC", default=[],
                   help="--paired: more second-domain volumes without partners")
    g.add_argument("--val-t1", "--val-a", dest="val_a", nargs="+", metavar="SRC", default=[],
                   help="paired validation: source-domain volumes (matched to --val-t2 by case)")
    g.add_argument("--val-t2", "--val-b", dest="val_b", nargs="+", metavar="SRC", default=[],
                   help="paired validation: target-domain volumes")
    g.add_argument("--val-every", type=int, default=d.val_every, help="steps between validation rounds")
    g.add_argument("--cache-dir", default=None, help="persist preprocessed volumes here (MONAI PersistentDataset)")
    n = p.add_argument_group("networks")
    n.add_argument("--generator", choices=GENERATORS, default=m.generator,
                   help="generator network: ResNet with 9 or 6 residual blocks, or MONAI's U-Net")
    n.add_argument("--ngf", type=int, default=m.ngf, help="generator filters in the first layer")
    n.add_argument("--ndf", type=int, default=m.ndf, help="discriminator filters in the first layer")
    n.add_argument("--n-layers-d", type=int, default=m.n_layers_d, help="PatchGAN layers (3: 70x70 patches)")
    n.add_argument("--norm", choices=("instance", "batch"), default=m.norm, help="normalisation layers")
    n.add_argument("--dropout", type=float, default=m.dropout, help="dropout in the ResNet blocks")
    n.add_argument("--upsample", choices=("transpose", "nearest"), default=m.upsample,
                   help="ResNet upsampling: transposed convolution (reference) or nearest + convolution")
    n.add_argument("--residual", choices=RESIDUALS, default=m.residual,
                   help="invert: learn a correction to the inverted-histogram map (the classical T1<->T2 baseline)")
    n.add_argument("--residual-input", choices=RESIDUAL_INPUTS, default=m.residual_input,
                   help="what the residual network sees: the image, or the inverted histogram match (the same "
                        "histogram for every patient)")
    n.add_argument("--gate-scale", type=float, default=m.gate_scale,
                   help="learning-rate multiplier of the residual correction's gate (it starts at zero)")
    n.add_argument("--context", type=int, default=m.context,
                   help="2.5D: neighbouring slices on each side whose bases the residual network also sees")
    n.add_argument("--base-smooth", type=float, default=m.base_smooth, metavar="SIGMA",
                   help="smooth the residual generator's base in-plane inside the brain with a Gaussian of SIGMA "
                        "pixels (0: off): the monotone map carries the source's noise into the output")
    n.add_argument("--init-gain", type=float, default=d.init_gain, help="std of the N(0, gain) initialisation")
    o = p.add_argument_group("objective and schedule")
    o.add_argument("--recipe", choices=RECIPES, default="auto",
                   help="defaults for options not given: cpu (see above), reference, or auto (cpu without a GPU)")
    o.add_argument("--steps", type=int, default=d.steps, help="iterations in all")
    o.add_argument("--decay-steps", type=int, default=d.decay_steps,
                   help="the last this many iterations decay the learning rate linearly to zero (default: half of "
                        "--steps)")
    o.add_argument("--batch-size", type=int, default=d.batch_size, help="slices per step and domain")
    o.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    o.add_argument("--beta1", type=float, default=d.beta1, help="Adam beta1")
    o.add_argument("--beta2", type=float, default=d.beta2, help="Adam beta2")
    o.add_argument("--lambda-adv", type=float, default=d.lambda_adv, help="adversarial (LSGAN) weight; 0: none")
    o.add_argument("--lambda-cycle", type=float, default=d.lambda_cycle, help="cycle-consistency (L1) weight")
    o.add_argument("--lambda-identity", type=float, default=d.lambda_identity,
                   help="identity loss weight, as a fraction of --lambda-cycle")
    o.add_argument("--lambda-paired", type=float, default=d.lambda_paired,
                   help="weight of the paired L1 term (with --paired)")
    o.add_argument("--target-norm", choices=TARGET_NORMS, default=d.target_norm,
                   help="with --residual invert, what the losses and discriminators compare with: each target "
                        "matched onto its domain's pooled histogram, or as normalised alone (its own 0.5-99.5 "
                        "percentiles, as medsynth-eval scores; each head's contrast kept); default: %(default)s")
    o.add_argument("--lambda-ssim", type=float, default=d.lambda_ssim,
                   help="weight of 1 - SSIM between translated and registered target (with --paired)")
    o.add_argument("--lambda-histogram", type=float, default=d.lambda_histogram,
                   help="weight of the L1 distance between the sorted foreground intensities of translated and "
                        "registered target (their histograms; with --paired)")
    o.add_argument("--lambda-lesion", type=float, default=d.lambda_lesion, metavar="W",
                   help="--lesion-augment: W x the mean absolute error inside the synthetic lesions joins the paired "
                        "L1, in both directions (at W = --lambda-paired a lesion counts as much as the whole slice "
                        "around it; default: %(default)s, off)")
    o.add_argument("--pool-size", type=int, default=d.pool_size, help="image pool of generated images (0: none)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu or cuda")
    r.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use)")
    r.add_argument("--no-amp", dest="amp", action="store_false",
                   help="turn off bf16 autocast (without this switch it is on with CUDA and on CPUs with native bf16)")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster on GPUs)")
    r.add_argument("--compile", action="store_true", help="torch.compile the networks")
    r.add_argument("--seed", type=int, default=d.seed, help="random seed (weights, slices, augmentation)")
    r.add_argument("--workers", type=int, default=d.workers,
                   help="data loader worker processes (-1: 1 on a CPU, up to 4 with a GPU)")
    r.add_argument("--log-every", type=int, default=d.log_every, help="steps between loss logs")
    r.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between PNG sample grids")
    r.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints (checkpoints/latest.pt, for --resume)")
    r.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="numbered checkpoints (step_*.pt) kept, older ones deleted; 0 keeps them all")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_recipe_defaults(p)
    return p


def _add_recipe_defaults(parser: argparse.ArgumentParser) -> None:
    """Say in each option's help both defaults: the reference CycleGAN's and, where it differs, the CPU
    recipe's (which applies without a GPU unless --recipe reference)."""
    plain, paired = recipe_values("cpu", False), recipe_values("cpu", True)
    for action in parser._actions:
        if action.dest in plain:
            label, value = "CPU recipe", plain[action.dest]
        elif action.dest in paired:
            label, value = "CPU recipe with --paired", paired[action.dest]
        else:
            continue

        def shown(v: object, switch: bool = action.nargs == 0) -> object:
            return ("on" if v else "off") if switch else v  # a switch says on/off, never "(default: False)"

        action.help = f"{action.help} (default: {shown(action.default)}; {label}: {shown(value)})"


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-train``: train a CycleGAN and write ``RUN_DIR/model.pt``."""
    args = build_parser().parse_args(argv)
    generic = args.a is not None or args.b is not None
    if generic and (args.t1 or args.t2):
        raise InputError("--a/--b", "use either --t1/--t2 or --a/--b with --names, not both")
    a, b = (args.a, args.b) if generic else (args.t1, args.t2)
    if (not a or not b) and not args.resume:
        raise InputError("--t1/--t2" if not generic else "--a/--b", "both domains are needed")
    names = _domain_names(args.names) if args.names else ("t1", "t2")
    if not args.resume:
        # a 2D/3D mix is refused from the file names, before torch is even imported (training checks it again)
        kind_of_inputs(find_files(a, what="any") + find_files(b, what="any")
                       + [f for src in (args.extra_a, args.extra_b) if src for f in find_files(src, what="any")])
    if not args.resume:
        _apply_recipe(args, _given_options(argv))
    if args.init:
        _apply_init(args, _given_options(argv))
    config = TrainConfig(
        a=list(a or []), b=list(b or []), names=names, out=args.out,
        model=ModelConfig(generator=args.generator, ngf=args.ngf, ndf=args.ndf, n_layers_d=args.n_layers_d,
                          norm=args.norm, dropout=args.dropout, upsample=args.upsample, residual=args.residual,
                          residual_input=args.residual_input, gate_scale=args.gate_scale,
                          context=args.context, base_smooth=args.base_smooth),
        size=args.size, axis=args.axis, min_foreground=args.min_foreground, steps=args.steps,
        decay_steps=args.decay_steps, batch_size=args.batch_size, lr=args.lr, beta1=args.beta1, beta2=args.beta2,
        lambda_adv=args.lambda_adv, lambda_cycle=args.lambda_cycle, lambda_identity=args.lambda_identity,
        pool_size=args.pool_size, paired=args.paired, lambda_paired=args.lambda_paired, lambda_ssim=args.lambda_ssim,
        lambda_histogram=args.lambda_histogram, extra_a=list(args.extra_a), extra_b=list(args.extra_b),
        intensity_augment=args.intensity_augment, augment_base=args.augment_base, target_norm=args.target_norm,
        lesion_augment=args.lesion_augment, lesion_radius=tuple(args.lesion_radius), lambda_lesion=args.lambda_lesion,
        lesion_site=args.lesion_site, threads=args.threads,
        init_gain=args.init_gain, augment=args.augment, flip=args.flip,
        enhance=[s for s in args.enhance.split(",") if s], bias_correction=args.bias_correction, seed=args.seed,
        device=args.device, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, workers=args.workers, cache_dir=args.cache_dir,
        log_every=args.log_every, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, val_a=args.val_a, val_b=args.val_b, val_every=args.val_every)
    config.init = args.init or ""
    if config.enhance:
        unknown = [s for s in config.enhance if s not in STEPS]
        if unknown:
            raise InputError("--enhance", f"unknown steps {', '.join(unknown)}: use {', '.join(STEPS)}")
    from medsynth.training import Interrupted, train  # torch and MONAI: only once the options are checked

    try:
        runtime = _given_runtime_options(argv) if args.resume else ()
        model = train(config, resume=args.resume, progress=not args.quiet, runtime=runtime)
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 130
    print(f"model written to {model}")
    return 0


def _given_options(argv: Sequence[str] | None) -> set[str]:
    """The options (argparse destinations) given on this command line, as opposed to defaulted."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _given_runtime_options(argv: Sequence[str] | None) -> list[str]:
    """The runtime options (see ``medsynth.training.RUNTIME_OPTIONS``) given on this command line: on
    ``--resume`` only these replace the run's saved values, not the parser's defaults."""
    from medsynth.training import RUNTIME_OPTIONS  # torch: only on --resume, after parsing

    given = _given_options(argv)
    return [key for key in RUNTIME_OPTIONS if key in given]


def _apply_init(args: argparse.Namespace, given: set[str]) -> None:
    """``--init``: the network options not given are the model's; one given that differs is refused (naming it)."""
    from medsynth.config import model_config_from_dict
    from medsynth.inference import default_model_path, read_model_file  # torch: only with --init
    from medsynth.training import INIT_OPTIONS

    if args.resume:
        raise InputError("--init", "a resumed run continues from its own checkpoint: leave --init out")
    path = default_model_path() if args.init == "default" else args.init
    config = read_model_file(path).get("config", {})
    theirs = model_config_from_dict(config.get("model", {}))
    # the model's intensity statistics were taken from volumes prepared its way
    bias = config.get("bias_correction", "none")
    if "bias_correction" not in given:
        args.bias_correction = bias
    elif args.bias_correction != bias:
        raise InputError("--bias-correction", f"{args.bias_correction} differs from the --init model's {bias} ({path}): "
                                              f"leave it out to take the model's")
    # what the model was taught to compare with, unless the run says otherwise (it has no weights of its own)
    if "target_norm" not in given:
        args.target_norm = config.get("target_norm", "histogram")
    for key in (*INIT_OPTIONS, "dropout"):
        value = getattr(theirs, key)
        if key not in given:
            setattr(args, key, value)
        elif getattr(args, key) != value and key != "dropout":  # dropout has no weights: a run may change it
            raise InputError(f"--{key.replace('_', '-')}", f"{getattr(args, key)} differs from the --init model's "
                                                           f"{value} ({path}): leave it out to take the model's")


def _apply_recipe(args: argparse.Namespace, given: set[str]) -> None:
    """Fill the options not given from ``--recipe`` (``auto``: the CPU recipe when there is no GPU)."""
    recipe = args.recipe
    if recipe == "auto":
        from medsynth.devices import resolve_device  # torch: only when training starts

        recipe = "cpu" if resolve_device(args.device).type == "cpu" else "reference"
    for key, value in recipe_values(recipe, args.paired).items():
        if key not in given:
            setattr(args, key, value)
    # the recipe smooths the residual generator's base: a plain network (--residual none) has none to smooth
    if "base_smooth" not in given and args.residual != "invert":
        args.base_smooth = 0.0
