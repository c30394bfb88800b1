"""Command-line entry points: instant help, dispatch through python -m medsynth, option defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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


@pytest.mark.parametrize("command", ["train", "convert", "eval", "enhance", "serve", "demo", "worker"])
def test_help_imports_no_heavy_module(command: str) -> None:
    """Every command's --help stays instant: torch, MONAI, FastAPI, matplotlib and SciPy load only to do the work."""
    code = (f"import sys\nfrom medsynth.cli import COMMANDS\ntry:\n    COMMANDS[{command!r}](['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'monai', 'fastapi', 'matplotlib', 'scipy', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["train", "convert", "eval", "enhance", "serve", "demo", "worker"])
def test_python_m_medsynth_dispatches(command: str) -> None:
    out = subprocess.run([sys.executable, "-m", "medsynth", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_unknown_command() -> None:
    out = subprocess.run([sys.executable, "-m", "medsynth", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "error: frobnicate: unknown command" in out.stderr


def test_worker_translates_job_after_job_and_survives_bad_ones(make_volume, tiny_model: Path, tmp_path: Path) -> None:
    """One ``python -m medsynth worker`` process: the protocol lines in order, outputs equal to medsynth-convert's,
    a bad job failing alone in one line, and end of input ending the worker with status 0."""
    import nibabel as nib

    from medsynth.cli import convert_main

    source = make_volume(tmp_path, "t1.nii.gz", shape=(18, 20, 12))
    existing = tmp_path / "again.nii.gz"
    existing.write_bytes(b"old")  # the worker replaces outputs, as convert --overwrite does
    jobs = [
        {"input": str(source), "output": str(tmp_path / "a.nii.gz"), "model": str(tiny_model)},
        {"input": str(tmp_path / "missing.nii.gz"), "output": str(tmp_path / "b.nii.gz"), "model": str(tiny_model)},
        "not json",
        {"input": str(source), "output": str(tmp_path / "c.nii.gz"), "axes": "all"},
        {"input": str(source), "output": str(existing), "model": str(tiny_model), "direction": "t2-to-t1",
         "axis": "all", "batch_size": 3},
    ]
    stdin = "\n".join(job if isinstance(job, str) else json.dumps(job) for job in jobs) + "\n"
    out = subprocess.run([sys.executable, "-m", "medsynth", "worker", "--device", "cpu"], input=stdin,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "READY"
    ends = [line for line in lines if line.split(" ", 1)[0] in ("DONE", "FAILED")]
    assert ends[0] == f"DONE {tmp_path / 'a.nii.gz'}"
    assert ends[1] == f"FAILED {tmp_path / 'missing.nii.gz'}: no such file"
    assert ends[2].startswith("FAILED <stdin>: job is not JSON")
    assert ends[3] == "FAILED <stdin>: unknown job field(s): axes"
    assert ends[4] == f"DONE {existing}"
    assert len(ends) == 5 and "Traceback" not in out.stderr
    first = lines[1:lines.index(ends[0])]
    assert first[0].startswith("ESTIMATE ") and first[0].endswith(str(source))
    percents = [int(line.split()[1]) for line in first[1:-1]]
    assert all(line.startswith("PROGRESS ") for line in first[1:-1])
    assert percents and percents == sorted(percents) and percents[-1] == 100
    word, total, network = first[-1].split()
    assert word == "TIMING" and float(total) > float(network) > 0

    for job, name in ((jobs[0], "ref_a.nii.gz"), (jobs[4], "ref_e.nii.gz")):
        argv = [job["input"], str(tmp_path / name), "--model", job["model"], "--device", "cpu", "--progress", "none"]
        for key in ("direction", "axis", "batch_size"):
            if key in job:
                argv += [f"--{key.replace('_', '-')}", str(job[key])]
        assert convert_main(argv) == 0
        got, want = nib.load(job["output"]), nib.load(str(tmp_path / name))
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
        np.testing.assert_array_equal(got.affine, want.affine)
