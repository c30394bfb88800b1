"""medsynth-train: a tiny run writes everything, resume is exact, bad inputs are refused, torchrun works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medsynth.cli import train_main

TINY = ["--size", "32", "--generator", "resnet6", "--ngf", "4", "--ndf", "4", "--quiet", "--log-every", "2"]


@pytest.fixture
def domains(tmp_path: Path, make_volume) -> tuple[Path, Path]:
    for i in range(2):
        make_volume(tmp_path / "t1" / f"case{i}", "t1.nii.gz", shape=(28, 30, 12), seed=i, contrast="t1")
        make_volume(tmp_path / "t2" / f"case{i + 5}", "t2.nii.gz", shape=(26, 34, 14), seed=i + 5, contrast="t2")
    return tmp_path / "t1", tmp_path / "t2"


def test_tiny_run_writes_everything(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    run = tmp_path / "run"
    code = train_main(["--t1", str(domains[0]), "--t2", str(domains[1]), "--out", str(run), *TINY,
                       "--steps", "4", "--decay-steps", "1", "--sample-every", "2", "--checkpoint-every", "2"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 4 and config["lambda_cycle"] == 10.0 and config["lambda_identity"] == 0.5
    assert config["pool_size"] == 50 and config["lr"] == 2e-4 and config["beta1"] == 0.5
    assert config["model"]["generator"] == "resnet6" and config["names"] == ["t1", "t2"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt", "step_0000002.pt",
                                                                     "step_0000004.pt"]
    samples = sorted((run / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step_0000002.png", "step_0000004.png"]
    grid = np.asarray(PILImage.open(samples[-1]))
    # two whole middle axial slices per domain, padded to the largest (x 28, y 34; y up to a multiple of 4: 36),
    # shown with anterior up (rows = y), three tiles (real | translated | reconstructed) with 2 px gaps
    assert grid.shape == (4 * (36 + 2) - 2, 3 * (28 + 2) - 2) and grid.std() > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["format"] == "medsynth-model" and model["domains"] == ["t1", "t2"]
    assert set(model["stats"]) == {"t1", "t2"} and model["stats"]["t2"]["hi"] > model["stats"]["t2"]["lo"]
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["step"] == 4 and {"opt_g", "opt_d", "schedulers", "pool_a", "pool_b", "rng_cpu"} <= set(checkpoint)
    # the learning rate decayed linearly to zero over the last step
    assert checkpoint["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.0)
    assert not list(run.rglob(".*partial*"))


def test_resume_is_bit_exact(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    args = ["--t1", str(domains[0]), "--t2", str(domains[1]), *TINY, "--steps", "6", "--decay-steps", "2",
            "--checkpoint-every", "3", "--sample-every", "100", "--pool-size", "2", "--batch-size", "2"]
    full = tmp_path / "full"
    assert train_main([*args, "--out", str(full)]) == 0
    # an interrupted run: the folder as it was after the step-3 checkpoint
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.json", cut / "config.json")
    shutil.copy(full / "checkpoints" / "step_0000003.pt", cut / "checkpoints" / "latest.pt")
    config = json.loads((cut / "config.json").read_text())
    config["out"] = str(cut)
    (cut / "config.json").write_text(json.dumps(config))
    assert train_main([*args, "--out", str(cut), "--resume"]) == 0
    a = torch.load(full / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for part in ("generators", "discriminators"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    for key in ("pool_a", "pool_b"):
        assert all(torch.equal(x, y) for x, y in zip(a[key]["images"], b[key]["images"]))
    # and an uninterrupted run does differ from one with another seed, so the comparison can fail
    other = tmp_path / "other"
    assert train_main([*args, "--out", str(other), "--seed", "1"]) == 0
    c = torch.load(other / "checkpoints" / "latest.pt", weights_only=True)
    assert not all(torch.equal(v, c["generators"][k]) for k, v in a["generators"].items())


def _bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], t1: list[str], t2: list[str],
         extra: tuple[str, ...] = ()) -> str:
    run = tmp_path / "badrun"
    code = train_main(["--t1", *t1, "--t2", *t2, "--out", str(run), *TINY, "--steps", "1", "--decay-steps", "0",
                       *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not run.exists(), "nothing may be written for a bad input"
    return lines[0]


def test_bad_inputs(tmp_path: Path, domains: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    t1, t2 = str(domains[0]), str(domains[1])
    (tmp_path / "empty").mkdir()
    assert _bad(tmp_path, capsys, [str(tmp_path / "empty")], [t2]).startswith(f"error: {tmp_path / 'empty'}: no ")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 this is not gzip")
    assert f"error: {bad / 'corrupt.nii.gz'}: cannot read as NIfTI" in _bad(tmp_path, capsys, [t1, str(bad / "corrupt.nii.gz")], [t2])
    (bad / "notes.txt").write_text("hello")
    assert "not a supported image file" in _bad(tmp_path, capsys, [t1, str(bad / "notes.txt")], [t2])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 1)).astype(np.float32), np.eye(4)),
             bad / "slice.nii.gz")
    assert "2D image" in _bad(tmp_path, capsys, [t1], [str(bad / "slice.nii.gz")])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 3)).astype(np.float32), np.eye(4)),
             bad / "frames.nii.gz")
    assert "3 frames" in _bad(tmp_path, capsys, [str(bad / "frames.nii.gz")], [t2])
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), bad / "nan.nii.gz")
    assert f"{bad / 'nan.nii.gz'}: 1 voxels are NaN or Inf" in _bad(tmp_path, capsys, [t1], [str(bad / "nan.nii.gz")])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), bad / "zero.nii.gz")
    assert "all voxels are zero" in _bad(tmp_path, capsys, [str(bad / "zero.nii.gz")], [t2])
    assert "multiple of 4" in _bad(tmp_path, capsys, [t1], [t2], ("--size", "30"))
    assert "--names" in _bad(tmp_path, capsys, [t1], [t2], ("--names", "ct,ct"))
    assert "error: --log-every: 0 must be at least 1" in _bad(tmp_path, capsys, [t1], [t2], ("--log-every", "0"))
    assert "error: --pool-size: -1 must not be negative" in _bad(tmp_path, capsys, [t1], [t2], ("--pool-size", "-1"))


def test_existing_run_needs_resume(tmp_path: Path, domains: tuple[Path, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    code = train_main(["--t1", str(domains[0]), "--t2", str(domains[1]), "--out", str(run), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {run}: the run folder exists; use --resume" in err
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    code = train_main(["--t1", str(domains[0]), "--t2", str(domains[1]), "--out", str(tmp_path / "new"), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


def test_validation_keeps_metrics_and_best_model(tmp_path: Path, make_volume) -> None:
    for i in range(2):
        make_volume(tmp_path / "train_t1", f"c{i}_t1.nii.gz", shape=(24, 24, 10), seed=i, contrast="t1")
        make_volume(tmp_path / "train_t2", f"c{i + 3}_t2.nii.gz", shape=(24, 24, 10), seed=i + 3, contrast="t2")
    make_volume(tmp_path / "val", "p9_t1.nii.gz", shape=(20, 24, 12), seed=9, contrast="t1")
    make_volume(tmp_path / "val", "p9_t2.nii.gz", shape=(20, 24, 12), seed=9, contrast="t2")
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "train_t1"), "--t2", str(tmp_path / "train_t2"), "--out", str(run),
                       *TINY, "--steps", "4", "--decay-steps", "2", "--val-t1", str(tmp_path / "val" / "p9_t1.nii.gz"),
                       "--val-t2", str(tmp_path / "val" / "p9_t2.nii.gz"), "--val-every", "2"])
    assert code == 0
    history = json.loads((run / "metrics.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert all(np.isfinite(h["psnr"]) and -1 <= h["ssim"] <= 1 for h in history)
    assert (run / "model_best.pt").exists()


def test_torchrun_two_gloo_processes(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medsynth", "train", "--t1", str(domains[0]), "--t2", str(domains[1]), "--out", str(run), *TINY,
           "--steps", "3", "--decay-steps", "1", "--device", "cpu", "--checkpoint-every", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "model.pt").exists() and (run / "checkpoints" / "latest.pt").exists()
    # only rank 0 writes: one event file, one config
    assert len(list((run / "tensorboard").glob("events.*"))) == 1
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3


def test_tiny_run_on_real_data(tmp_path: Path, shared_data: Path) -> None:
    case = shared_data / "brain_t1t2" / "TCGA-DU-7294"
    run = tmp_path / "real"
    code = train_main(["--t1", str(case / "t1.nii.gz"), "--t2", str(shared_data / "brain_t1t2" / "AURORA_sample" / "t2.nii.gz"),
                       "--out", str(run), *TINY, "--steps", "2", "--decay-steps", "0"])
    assert code == 0
    stats = torch.load(run / "model.pt", weights_only=True)["stats"]
    # real intensities: the T2's upper percentile is far above the T1's, and both have a zero background
    assert stats["t2"]["hi"] > stats["t1"]["hi"] and stats["t1"]["background"] == 0.0


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    import signal
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "medsynth", "train", "--t1", str(domains[0]), "--t2", str(domains[1]), "--out",
           str(run), *TINY, "--steps", "100000", "--decay-steps", "0", "--sample-every", "1",
           "--checkpoint-every", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((run / "samples").glob("step_0000002.png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint written; continue with" in err and "Traceback" not in err
    step = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert step >= 2 and not (run / "model.pt").exists()
    # resume needs no inputs again; shorten nothing: the saved schedule is kept, so stop it the same way
    proc = subprocess.Popen([sys.executable, "-m", "medsynth", "train", "--out", str(run), "--resume", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not list((run / "samples").glob(f"step_{step + 2:07d}.png")) and time.monotonic() < deadline + 60:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"] >= step + 2


def test_tiny_run_on_the_packaged_real_sample(tmp_path: Path) -> None:
    """Real MRI that is always there (the package ships it), so this runs without ../shared/data too."""
    from medsynth.demo import SAMPLE_T1, SAMPLE_T2

    run = tmp_path / "sample"
    assert train_main(["--t1", str(SAMPLE_T1), "--t2", str(SAMPLE_T2), "--out", str(run), *TINY, "--steps", "2",
                       "--decay-steps", "0", "--axis", "coronal", "--sample-every", "2"]) == 0
    grid = np.asarray(PILImage.open(run / "samples" / "step_0000002.png"))
    # one whole coronal slice per domain (x 240, z 155 -> 156), shown with superior up
    assert grid.shape == (2 * (156 + 2) - 2, 3 * (240 + 2) - 2)
    assert torch.load(run / "model.pt", weights_only=True)["config"]["axis"] == "coronal"
