"""Command-line entry points: instant help, dispatch through python -m medsynth, option defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medsynth.cli import convert_parser, train_parser


def test_train_defaults_are_the_reference_cyclegan() -> None:
    args = train_parser().parse_args(["--t1", "a", "--t2", "b", "--out", "r"])
    assert (args.generator, args.ngf, args.ndf, args.n_layers_d, args.norm) == ("resnet9", 64, 64, 3, "instance")
    assert (args.lr, args.beta1, args.beta2, args.lambda_cycle, args.lambda_identity, args.pool_size) == \
        (2e-4, 0.5, 0.999, 10.0, 0.5, 50)
    assert (args.size, args.axis, args.batch_size, args.init_gain) == (256, "axial", 1, 0.02)


def test_convert_defaults() -> None:
    args = convert_parser().parse_args(["in.nii.gz", "out.nii.gz"])
    assert (args.model, args.axis, args.fuse, args.dtype, args.overwrite) == (None, "axial", "mean", "float32", False)


def test_help_does_not_import_torch() -> None:
    """--help stays instant because the parsers import no heavy module."""
    code = ("import sys, medsynth.cli as c\ntry:\n    c.train_parser().parse_args(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


@pytest.mark.parametrize("command", ["train", "convert", "eval", "enhance", "serve", "demo"])
def test_help_imports_no_heavy_module(command: str) -> None:
    """Every command's --help stays instant: torch, MONAI, FastAPI, matplotlib and SciPy load only to do the work."""
    code = (f"import sys\nfrom medsynth.cli import COMMANDS\ntry:\n    COMMANDS[{command!r}](['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'monai', 'fastapi', 'matplotlib', 'scipy', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["train", "convert", "eval", "enhance", "serve", "demo"])
def test_python_m_medsynth_dispatches(command: str) -> None:
    out = subprocess.run([sys.executable, "-m", "medsynth", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_unknown_command() -> None:
    out = subprocess.run([sys.executable, "-m", "medsynth", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "error: frobnicate: unknown command" in out.stderr
