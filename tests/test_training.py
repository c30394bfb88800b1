"""medsynth-train: a tiny run writes everything, resume is exact, bad inputs are refused, torchrun works."""

from __future__ import annotations

import json
import os
import re
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
    # shown with anterior up (rows = y), three tiles (real | translated | reconstructed) with 2 px grey gaps,
    # enlarged by a whole factor (28 px is too narrow for the titles)
    tile = _first_tile(grid, (36, 28), 4, 3)
    assert tile.shape[0] > 36 and tile.std() > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["format"] == "medsynth-model" and model["domains"] == ["t1", "t2"]
    assert set(model["stats"]) == {"t1", "t2"} and model["stats"]["t2"]["hi"] > model["stats"]["t2"]["lo"]
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["step"] == 4 and {"opt_g", "opt_d", "schedulers", "pool_a", "pool_b", "rng_cpu"} <= set(checkpoint)
    # the learning rate decayed linearly to zero over the last step
    assert checkpoint["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.0)
    assert not list(run.rglob(".*partial*"))


def _first_tile(grid: np.ndarray, tile: tuple[int, int], rows: int, columns: int) -> np.ndarray:
    """The first tile of a sample grid of ``rows`` x ``columns`` tiles of ``tile`` (height, width) pixels, enlarged
    by a whole factor s, with 2 px grey gaps, below a band of titles and right of a band of row labels (which must
    hold text)."""
    height, width = grid.shape
    fits = [(s, height - (rows * (tile[0] * s + 2) - 2), width - (columns * (tile[1] * s + 2) - 2))
            for s in range(1, 6)]
    s, top, left = next(f for f in fits if 0 < f[1] < 80 and 0 < f[2] < 200
                        and (grid[f[1] + tile[0] * f[0]:f[1] + tile[0] * f[0] + 2, f[2]:] == 96).all())
    first = grid[top:top + tile[0] * s, left:left + tile[1] * s]
    assert np.array_equal(first, np.kron(first[::s, ::s], np.ones((s, s), np.uint8)))
    assert grid[:top].max() == 255 and grid[top:, :left].max() == 255  # the labels
    return first


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
    assert "error: --lesion-augment: 1.5 is not a probability (0 to 1)" in _bad(tmp_path, capsys, [t1], [t2],
                                                                              ("--lesion-augment", "1.5"))
    assert ("error: --lambda-lesion: weighs the synthetic lesions of paired training: it needs --paired, "
            "--lesion-augment P and --lambda-paired above 0") in _bad(tmp_path, capsys, [t1], [t2], ("--lambda-lesion", "10"))
    assert "error: --lambda-lesion: -1 must be a finite number, not negative" in _bad(
        tmp_path, capsys, [t1], [t2], ("--lambda-lesion", "-1"))
    assert "error: --lesion-radius: 16 4 is not two radii in pixels, 0 < MIN <= MAX" in _bad(
        tmp_path, capsys, [t1], [t2], ("--lesion-radius", "16", "4"))
    assert "error: --lesion-radius: 0 8 is not" in _bad(tmp_path, capsys, [t1], [t2], ("--lesion-radius", "0", "8"))
    assert "error: --lesion-radius: 4 inf is not" in _bad(tmp_path, capsys, [t1], [t2], ("--lesion-radius", "4", "inf"))
    assert ("error: --target-norm: chooses the targets of residual generators: add --residual invert"
            in _bad(tmp_path, capsys, [t1], [t2], ("--target-norm", "percentile")))
    assert ("error: --lesion-augment: pastes lesions into registered pairs: it needs --paired"
            in _bad(tmp_path, capsys, [t1], [t2], ("--lesion-augment", "0.5")))
    # shaping lesions that are never pasted is refused, not ignored
    for option in (("--lesion-radius", "4", "32"), ("--lesion-site", "white")):
        assert (f"error: {option[0]}: shapes the synthetic lesions: it needs --lesion-augment P above 0"
                in _bad(tmp_path, capsys, [t1], [t2], option))
    with pytest.raises(SystemExit) as stop:
        train_main(["--t1", t1, "--t2", t2, "--out", str(tmp_path / "site"), "--lesion-site", "grey"])
    assert stop.value.code == 2 and "invalid choice: 'grey'" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()
    # a configuration made in Python (or read from JSON) is checked as the command line is
    from medsynth.config import TrainConfig
    from medsynth.errors import InputError
    from medsynth.training import train

    with pytest.raises(InputError, match="'grey' is not one of anywhere, white"):
        train(TrainConfig(a=[t1], b=[t2], out=str(tmp_path / "api"), size=32, steps=1, lesion_site="grey"),
              progress=False)
    assert not (tmp_path / "api").exists()
    for field, value, message in (("lesion_dark", (0.4, 0.12), "0.4 0.12 is not two T1 foreground quantiles"),
                                  ("lesion_dark", (0.1, 1.5), "0.1 1.5 is not two T1 foreground quantiles"),
                                  ("lesion_core", 1.5, "1.5 is not a probability (0 to 1)")):
        with pytest.raises(InputError, match="^" + re.escape(f"{field}: {message}")):
            train(TrainConfig(a=[t1], b=[t2], out=str(tmp_path / "api"), size=32, steps=1, **{field: value}),
                  progress=False)
        assert not (tmp_path / "api").exists()


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


def test_validation_rounds_print_scores_beside_the_fair_baseline(tmp_path: Path, make_volume,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from medsynth.evaluation import masked_metrics
    from medsynth.inference import fair_baseline_translator

    for i in range(2):
        make_volume(tmp_path / "train_t1", f"c{i}_t1.nii.gz", shape=(24, 24, 10), seed=i, contrast="t1")
        make_volume(tmp_path / "train_t2", f"c{i + 3}_t2.nii.gz", shape=(24, 24, 10), seed=i + 3, contrast="t2")
    val_t1 = make_volume(tmp_path / "val", "p9_t1.nii.gz", shape=(20, 24, 12), seed=9, contrast="t1")
    val_t2 = make_volume(tmp_path / "val", "p9_t2.nii.gz", shape=(20, 24, 12), seed=9, contrast="t2")
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "train_t1"), "--t2", str(tmp_path / "train_t2"), "--out", str(run),
                       *TINY, "--steps", "5", "--decay-steps", "2", "--val-t1", str(val_t1), "--val-t2", str(val_t2),
                       "--val-every", "2"])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    plan = [l for l in err if l.startswith("plan:")]
    assert plan and plan[0].endswith("; validation every 2 steps and at the end on 1 pair")
    number = r"(-?\d+\.\d+)"
    pattern = re.compile(rf"validation at step (\d+): t1-to-t2 PSNR {number} dB SSIM {number} \(fair baseline "
                         rf"{number} dB, {number}\); t2-to-t1 PSNR {number} dB SSIM {number} \(fair baseline "
                         rf"{number} dB, {number}\)$")
    lines = [l for l in err if l.startswith("validation at step")]
    matches = [pattern.match(l) for l in lines]
    # rounds at steps 2 and 4, and one at the end (step 5)
    assert all(matches) and [int(m.group(1)) for m in matches] == [2, 4, 5], lines
    history = json.loads((run / "metrics.json").read_text())
    for m, entry in zip(matches, history):
        assert float(m.group(2)) == pytest.approx(entry["t1-to-t2"]["psnr"], abs=0.006)
        assert float(m.group(7)) == pytest.approx(entry["t2-to-t1"]["ssim"], abs=6e-4)
    # the fair baseline is the same every round, and it is the one medsynth-eval scores from the model file
    assert len({(m.group(4), m.group(5), m.group(8), m.group(9)) for m in matches}) == 1
    t1, t2 = (nib.load(p).get_fdata(dtype=np.float32) for p in (val_t1, val_t2))
    fair = fair_baseline_translator(run / "model.pt").translate(val_t1, direction="t1-to-t2").array
    expected = masked_metrics(fair, t2, (t1 > 0) & (t2 > 0))
    assert float(matches[0].group(4)) == pytest.approx(expected["psnr"], abs=0.006)
    assert float(matches[0].group(5)) == pytest.approx(expected["ssim"], abs=6e-4)
    assert history[-1]["fair_baseline"]["t1-to-t2"]["psnr"] == pytest.approx(expected["psnr"], abs=1e-6)


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
    # one whole coronal slice per domain (x 240, z 155 -> 156), shown with superior up, not enlarged
    assert _first_tile(grid, (156, 240), 2, 3).shape == (156, 240)
    assert torch.load(run / "model.pt", weights_only=True)["config"]["axis"] == "coronal"


# ------------------------------------------------------------------------- paired, CPU speed, plan, steps


def _pair(folder: Path, case: str, shape: tuple[int, int, int] = (30, 34, 12), seed: int = 0,
          affine: np.ndarray | None = None, b_shape: tuple[int, int, int] | None = None) -> tuple[Path, Path]:
    """A registered pair whose second image is a known pixelwise function of the first: b = 3 a + 100 inside the
    head, so that after each image's own normalisation b is a, voxel by voxel, background included."""
    from conftest import phantom

    a = phantom(shape, seed, "t1")
    b = np.where(a > 0, 3.0 * a + 100.0, 0.0).astype(np.float32)
    if b_shape is not None:
        b = phantom(b_shape, seed, "t2")
    affine = np.eye(4) if affine is None else affine
    paths = []
    for name, data in (("t1", a), ("t2", b)):
        path = folder / name / f"{case}_{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine if name == "t1" else np.eye(4)), path)
        paths.append(path)
    return paths[0], paths[1]


def _datasets(tmp_path: Path, paired: bool, **overrides) -> "SliceDataset":  # noqa: F821
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.training import DomainData, SliceDataset, pair_volumes

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    a = DomainData(sorted((tmp_path / "t1").glob("*.nii.gz")), progress=False)
    b = DomainData(sorted((tmp_path / "t2").glob("*.nii.gz")), progress=False)
    config = TrainConfig(size=24, paired=paired, model=ModelConfig(generator="resnet6", ngf=4), **overrides)
    return SliceDataset(a, b, config, pair_volumes(a, b) if paired else None)


def test_paired_sampler_gives_both_images_the_same_slice_and_augmentation(tmp_path: Path) -> None:
    data = _datasets(tmp_path, paired=True)
    for k in range(12):
        sample = data[k]
        a, b = sample["a"][0], sample["b"][0]
        assert a.shape == b.shape == (24, 24)
        assert (a > -0.8).sum() > 50
        # normalised, b = 3 a + 100 is b = a; one slice, crop, flip and affine for both keep that everywhere
        assert torch.allclose(a, b, atol=1e-4), k
    # the unpaired sampler draws the two independently: the relation breaks, so the check above can fail
    unpaired = _datasets(tmp_path / "u", paired=False)
    broken = 0
    for k in range(12):
        sample = unpaired[k]
        broken += int(not torch.allclose(sample["a"], sample["b"], atol=1e-4))
    assert broken >= 10


def test_paired_intensity_augmentation_changes_inputs_not_targets(tmp_path: Path) -> None:
    data = _datasets(tmp_path, paired=True, intensity_augment=True)
    changed = 0
    for k in range(10):
        s = data[k]
        assert set(s) == {"a", "b", "a_target", "b_target"}
        assert torch.allclose(s["a_target"], s["b_target"], atol=1e-4)
        # the background stays background in the augmented input
        assert torch.equal(s["a"] <= -1 + 1e-3, s["a_target"] <= -1 + 1e-3)
        changed += int(not torch.allclose(s["a"], s["a_target"]))
    assert changed >= 5


def test_paired_training_adds_the_paired_term(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "3", "--paired", "--residual", "invert", "--lambda-adv", "0", "--lambda-cycle", "0",
                       "--intensity-augment", "--sample-every", "3"])
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "paired L1 x 10 + SSIM x 30 (2 pairs)" in err and "adversarial" not in err.split("plan:")[1].splitlines()[0]
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["config"]["paired"] and model["config"]["model"]["residual"] == "invert"
    # each domain's training histogram travels with the model (the fair baseline and the residual need it)
    assert len(model["stats"]["t2"]["quantiles"]) == 129
    target = model["generators"]["a_to_b"]["target.quantiles"].float()
    assert torch.allclose(target, torch.tensor(model["stats"]["t2"]["quantiles"]), atol=1e-3)
    assert (run / "samples" / "step_0000003.png").exists()


def test_mismatched_pairs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _pair(tmp_path / "shape", "case0", b_shape=(30, 34, 14))
    line = _bad(tmp_path, capsys, [str(a)], [str(b)], ("--paired",))
    assert str(a) in line and str(b) in line and "shape" in line
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    a, b = _pair(tmp_path / "affine", "case0", affine=shifted)
    line = _bad(tmp_path, capsys, [str(a)], [str(b)], ("--paired",))
    assert str(a) in line and str(b) in line and "affine" in line
    a, _ = _pair(tmp_path / "alone", "case0")
    a2, _ = _pair(tmp_path / "alone", "case1")
    _, b = _pair(tmp_path / "other", "case7")
    line = _bad(tmp_path, capsys, [str(a), str(a2)], [str(b)], ("--paired",))
    assert "case0" in line or "case1" in line or "case7" in line


def test_threads_precision_plan_and_steps_alone(tmp_path: Path, domains: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from medsynth.devices import cpu_has_native_bf16

    before = torch.get_num_threads()
    run = tmp_path / "run"
    try:
        code = train_main(["--t1", str(domains[0]), "--t2", str(domains[1]), "--out", str(run), *TINY,
                           "--steps", "14", "--threads", "2", "--sample-every", "100", "--device", "cpu"])
        assert code == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    plan = [l for l in err.splitlines() if l.startswith("plan:")]
    assert plan and plan[0].startswith("plan: 14 steps (learning rate constant to 7, then linear decay)")
    assert "2 threads" in plan[0] and ("bf16 autocast" in plan[0]) == cpu_has_native_bf16()
    assert any(l.startswith("estimate: ") and "s/step" in l for l in err.splitlines())
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    # --steps alone is the whole run: 14 iterations, the last 7 decaying to zero
    assert checkpoint["step"] == 14 and checkpoint["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.0)
    assert checkpoint["train_seconds"] > 0
    run2 = tmp_path / "fp32"
    assert train_main(["--t1", str(domains[0]), "--t2", str(domains[1]), "--out", str(run2), *TINY,
                       "--steps", "1", "--no-amp", "--threads", "1", "--device", "cpu"]) == 0
    plan = [l for l in capsys.readouterr().err.splitlines() if l.startswith("plan:")][0]
    assert "1 thread," in plan and "fp32" in plan


def test_bf16_step_agrees_with_fp32() -> None:
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.cyclegan import CycleGAN

    config = TrainConfig(size=32, model=ModelConfig(generator="resnet6", ngf=8, ndf=8), pool_size=0)
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    outs = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model = CycleGAN(config)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model.generators(x, y)
        outs.append({k: v.float() for k, v in out.items()})
        opt_g, opt_d = model.optimizers()
        losses = model.train_step(x, y, opt_g, opt_d, autocast=autocast)
        outs[-1]["loss"] = torch.stack([losses[k] for k in ("cycle_a", "cycle_b", "g_ab", "g_ba")])
    for key, p99, mean in (("fake_b", 0.05, 0.01), ("fake_a", 0.05, 0.01), ("rec_a", 0.08, 0.02),
                           ("rec_b", 0.08, 0.02)):
        # bf16 keeps 8 bits of mantissa: 99% of voxels within a few hundredths on [-1, 1], about a hundredth on
        # average through one generator (twice that through two, for the reconstructions)
        diff = (outs[0][key] - outs[1][key]).abs().flatten()
        assert torch.quantile(diff, 0.99) < p99, key
        assert diff.mean() < mean, key
    assert torch.allclose(outs[0]["loss"], outs[1]["loss"], rtol=0.05)


def test_cpu_recipe_fills_only_what_was_not_given() -> None:
    from medsynth.cli.train import _apply_recipe, _given_options, build_parser
    from medsynth.config import CPU_PAIRED_RECIPE, CPU_RECIPE

    argv = ["--t1", "a", "--t2", "b", "--out", "o", "--device", "cpu", "--ngf", "8", "--steps", "10"]
    args = build_parser().parse_args(argv)
    _apply_recipe(args, _given_options(argv))
    assert args.ngf == 8 and args.steps == 10 and args.decay_steps is None
    assert args.generator == CPU_RECIPE["generator"] and args.size == CPU_RECIPE["size"]
    assert args.residual == "none"
    argv = [*argv, "--paired"]
    args = build_parser().parse_args(argv)
    _apply_recipe(args, _given_options(argv))
    assert args.residual == CPU_PAIRED_RECIPE["residual"]
    assert args.base_smooth == CPU_PAIRED_RECIPE["base_smooth"] > 0
    # a plain network with the paired recipe: no base, so nothing to smooth (and no error for an option not given)
    plain = [*argv, "--residual", "none"]
    args = build_parser().parse_args(plain)
    _apply_recipe(args, _given_options(plain))
    assert args.residual == "none" and args.base_smooth == 0.0
    argv = ["--t1", "a", "--t2", "b", "--out", "o", "--recipe", "reference"]
    args = build_parser().parse_args(argv)
    _apply_recipe(args, _given_options(argv))
    assert args.generator == "resnet9" and args.ngf == 64 and args.size == 256 and args.steps == 200_000


def test_target_norm_keeps_each_heads_own_contrast_or_the_pooled_histogram(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--target-norm``: the residual losses' targets are each T2 matched onto the pooled T2 histogram
    (``histogram``), or the T2 as normalised alone (``percentile``: what ``medsynth-eval`` scores against); two
    heads whose T2 contrasts differ show the difference. End to end it is in the plan line and the saved config."""
    import nibabel as nib

    from medsynth.config import TrainConfig
    from medsynth.errors import InputError
    from medsynth.training import DomainData, prepare_domains, train

    files = {"t1": [], "t2": []}
    for i, power in enumerate((0.5, 2.0)):
        t1, t2 = _pair(tmp_path, f"case{i}", seed=i)
        img = nib.load(t2)
        data = np.asarray(img.dataobj, np.float32)
        # the same T1/T2 anatomy, another T2 contrast per head: a monotone, non-linear change of the bright end
        head = data > 0
        data[head] = (data[head] / data[head].max()) ** power * 1000 + 1
        nib.save(nib.Nifti1Image(data, img.affine), t2)
        files["t1"].append(t1)
        files["t2"].append(t2)
    targets = {}
    for norm in ("histogram", "percentile"):
        config = TrainConfig(paired=True, size=32, lambda_adv=0, lambda_cycle=0, target_norm=norm)
        config.model.residual, config.model.residual_input = "invert", "base"
        a, b = DomainData(files["t1"], progress=False), DomainData(files["t2"], progress=False)
        prepare_domains(a, b, config)
        # [image, base, target]
        assert all(v.shape[0] == 3 for v in a.volumes + b.volumes)
        targets[norm] = [v[-1] for v in b.volumes], [v[0] for v in b.volumes]
    own, normalised = targets["percentile"]
    for t, v in zip(own, normalised):
        assert torch.equal(t, v)
    matched, _ = targets["histogram"]
    # matched onto one histogram, the two heads' targets have (nearly) the same foreground quantiles; as normalised
    # alone they keep their own contrasts, which differ
    qs = torch.linspace(0.05, 0.95, 19)

    def quantiles(x: torch.Tensor) -> torch.Tensor:
        return torch.quantile(x[x > -1].float(), qs)

    assert (quantiles(matched[0]) - quantiles(matched[1])).abs().max() < 0.1
    assert (quantiles(own[0]) - quantiles(own[1])).abs().max() > 0.3
    assert not torch.equal(matched[0], own[0])

    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "2", "--paired", "--residual", "invert", "--residual-input", "base",
                       "--lambda-adv", "0", "--lambda-cycle", "0", "--target-norm", "percentile"])
    assert code == 0, capsys.readouterr().err
    assert "px), targets as normalised alone, 32 px axial slices" in capsys.readouterr().err
    assert TrainConfig.load(run / "config.json").target_norm == "percentile"
    with pytest.raises(InputError, match="'linear' is not one of histogram, percentile"):
        train(TrainConfig(a=[str(files["t1"][0])], b=[str(files["t2"][0])], out=str(tmp_path / "api"), size=32,
                          steps=1, target_norm="linear"), progress=False)
    assert not (tmp_path / "api").exists()


def test_context_run_trains_on_neighbouring_slices_and_converts(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from medsynth.config import TrainConfig
    from medsynth.inference import Translator
    from medsynth.training import DomainData, SliceDataset, prepare_domains

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    files_a = sorted((tmp_path / "t1").glob("*.nii.gz"))
    files_b = sorted((tmp_path / "t2").glob("*.nii.gz"))
    config = TrainConfig(a=[str(f) for f in files_a], b=[str(f) for f in files_b], paired=True, size=32,
                         axis="coronal", lambda_adv=0, lambda_cycle=0)
    config.model.residual, config.model.residual_input, config.model.context = "invert", "base", 1
    a, b = DomainData(files_a, progress=False), DomainData(files_b, progress=False)
    pairs, _ = prepare_domains(a, b, config)
    v = a.volumes[0]
    # [image, base, base of the slice before, base of the slice after, standardised image], along the axis
    assert v.shape[0] == 5
    base = v[1]
    np.testing.assert_array_equal(v[2][:, 1:], base[:, :-1])
    np.testing.assert_array_equal(v[3][:, :-1], base[:, 1:])
    np.testing.assert_array_equal(v[2][:, 0], base[:, 0])  # the edge slice repeats
    sample = SliceDataset(a, b, config, pairs)[0]
    assert sample["a"].shape == (5, 32, 32) and sample["b"].shape == (5, 32, 32)

    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "3", "--paired", "--residual", "invert", "--residual-input", "base",
                       "--context", "1", "--gate-scale", "10", "--lambda-adv", "0", "--lambda-cycle", "0",
                       "--sample-every", "3"])
    assert code == 0, capsys.readouterr().err
    assert "2.5D: 1 neighbouring slices each side" in capsys.readouterr().err
    translator = Translator.from_file(run / "model.pt", device="cpu")
    out = translator.translate(files_a[0], axis="all")
    assert out.array.shape == (30, 34, 12) and np.isfinite(out.array).all()
    assert translator.config.model.context == 1 and translator.config.model.gate_scale == 10


def test_lesion_term_trains_a_residual_model_and_is_logged(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--lambda-lesion`` end to end: the residual generators the study uses (the term compares the standardised
    channel), every sample lesioned, the plan line naming the term and TensorBoard holding its two losses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "2", "--log-every", "1", "--paired", "--residual", "invert", "--residual-input",
                       "base", "--intensity-augment", "--lambda-adv", "0", "--lambda-cycle", "0",
                       "--lesion-augment", "1", "--lambda-lesion", "10"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "+ lesion L1 x 10 (2 pairs)" in err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if "lesion" in t]
    assert len(tags) == 2 and all(events.Scalars(t)[-1].value > 0 for t in tags), tags


def test_window_means_average_a_counted_term_over_its_own_steps() -> None:
    """The lesion L1 of a logging window is its mean over the steps with a lesion (the others add zero to its sum);
    every other term is averaged over the whole window, and a counted term no step had is not logged."""
    from medsynth.cyclegan import COUNT_PREFIX
    from medsynth.training import accumulate, window_means

    counted = COUNT_PREFIX + "lesion_b"
    steps = [{"paired_b": torch.tensor(p), "lesion_b": torch.tensor(lesion), counted: torch.tensor(float(lesion > 0))}
             for p, lesion in ((0.4, 0.6), (0.2, 0.0), (0.3, 0.3), (0.1, 0.0))]
    sums: dict = {}
    counts: dict = {}
    for losses in steps:
        accumulate(losses, sums, counts)
    means = window_means(sums, counts, len(steps))
    assert means["paired_b"] == pytest.approx(0.25) and means["lesion_b"] == pytest.approx(0.45)
    assert window_means({"lesion_b": torch.tensor(0.0)}, {"lesion_b": torch.tensor(0.0)}, 4) == {}


# ------------------------------------------------------------------------- multi-planar training (--axis all)


def _plane_of(image: torch.Tensor, volumes: list[torch.Tensor], size: int) -> tuple[str, bool]:
    """Which axis (and whether flipped left-right) a padded, unaugmented training slice was taken along: the one
    slice of the volumes it equals."""
    from monai.transforms import SpatialPad

    from medsynth.config import AXIS_INDEX

    pad = SpatialPad((size, size), value=-1.0)
    for axis, dim in AXIS_INDEX.items():
        for v in volumes:
            for i in range(v.shape[dim + 1]):
                candidate = torch.as_tensor(pad(v[:1].select(dim + 1, i)))[0]
                for flipped in (False, True):
                    if torch.equal(candidate.flip(0) if flipped else candidate, image):
                        return axis, flipped
    raise AssertionError("the sample is no slice of the volumes")


def test_multi_planar_sampler_draws_every_axis_and_keeps_the_axial_draws(tmp_path: Path) -> None:
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.training import DomainData, SliceDataset, pair_volumes

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    a = DomainData(sorted((tmp_path / "t1").glob("*.nii.gz")), progress=False)
    b = DomainData(sorted((tmp_path / "t2").glob("*.nii.gz")), progress=False)
    pairs = pair_volumes(a, b)

    def dataset(axis: str) -> SliceDataset:
        # 40 px holds every slice of the 30 x 34 x 12 volumes whole: padded, never cropped, so each sample can be
        # found among the volumes' slices
        return SliceDataset(a, b, TrainConfig(size=40, paired=True, augment=False, axis=axis,
                                              model=ModelConfig(generator="resnet6", ngf=4)), pairs)

    multi, axial = dataset("all"), dataset("axial")
    seen: dict[str, int] = {}
    flips: dict[str, int] = {}
    for k in range(36):
        sample = multi[k]
        # one slice for both images of the pair, along whichever axis
        assert torch.allclose(sample["a"], sample["b"], atol=1e-4), k
        plane, flipped = _plane_of(sample["a"][0], a.volumes, 40)
        seen[plane] = seen.get(plane, 0) + 1
        flips[plane] = flips.get(plane, 0) + int(flipped)
        if plane == "axial":
            # the axis comes from a stream of its own: an axial draw is the one-axis run's sample, exactly
            assert torch.equal(sample["a"], axial[k]["a"]) and torch.equal(sample["b"], axial[k]["b"]), k
    assert set(seen) == {"axial", "coronal", "sagittal"} and min(seen.values()) >= 6, seen
    # left-right flips in the planes that have a left-right axis, never in sagittal slices
    assert flips["sagittal"] == 0 and flips["axial"] + flips["coronal"] > 0, flips
    # a one-axis run stays on its axis
    assert {_plane_of(axial[k]["a"][0], a.volumes, 40)[0] for k in range(8)} == {"axial"}


def test_multi_planar_run_trains_converts_and_refuses_context(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from medsynth.bundle import bundle_metadata
    from medsynth.config import TrainConfig
    from medsynth.inference import Translator, read_model_file
    from medsynth.training import grid_axis

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "3", "--paired", "--residual", "invert", "--axis", "all", "--lambda-adv", "0",
                       "--lambda-cycle", "0", "--sample-every", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "32 px axial, coronal and sagittal slices" in err
    assert json.loads((run / "config.json").read_text())["axis"] == "all"
    assert (run / "samples" / "step_0000003.png").exists()
    # the grids' slices: on the validation axis (axial, as conversion's default) for a multi-planar run, else on
    # the training axis
    config = TrainConfig(axis="all")
    assert grid_axis(config) == "axial" and config.train_axes == ("axial", "coronal", "sagittal")
    config.val_axis = "coronal"
    assert grid_axis(config) == "coronal"
    assert grid_axis(TrainConfig(axis="sagittal")) == "sagittal"
    config.val_axis = "all"
    assert grid_axis(config) == "axial"
    translator = Translator.from_file(run / "model.pt", device="cpu")
    source = sorted((tmp_path / "t1").glob("*.nii.gz"))[0]
    for axis in ("axial", "all"):
        out = translator.translate(source, axis=axis)
        assert out.array.shape == (30, 34, 12) and np.isfinite(out.array).all()
    meta = bundle_metadata(read_model_file(run / "model.pt"), "t1-to-t2")
    assert "axial slice by slice (trained on axial, coronal and sagittal slices)" in meta["description"]
    a, b = str(tmp_path / "t1"), str(tmp_path / "t2")
    line = _bad(tmp_path, capsys, [a], [b], ("--paired", "--residual", "invert", "--residual-input", "base",
                                             "--context", "1", "--axis", "all"))
    assert "--axis" in line and "context" in line


def test_context_needs_a_residual_network_on_the_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _pair(tmp_path, "case0")
    line = _bad(tmp_path, capsys, [str(a)], [str(b)], ("--paired", "--residual", "none", "--context", "1"))
    assert "--context" in line and "residual" in line


def test_rank_base_keeps_what_a_histogram_match_cannot_undo() -> None:
    from medsynth.training import rank_base

    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    head = (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2
    image = torch.where(head, torch.sin(yy / 4) * 0.5, torch.tensor(-1.0))
    base = torch.where(head, -0.8 * image + 0.1, torch.tensor(-1.0))  # decreasing in the image, as the real base
    # a global monotone change (gamma-like) is undone: the base comes back as it was
    gamma = torch.where(head, (image + 1) ** 1.6 / 2 ** 0.6 - 1, image)
    np.testing.assert_allclose(rank_base(gamma, base).numpy(), base.numpy(), atol=1e-6)
    # a bias field reorders pixels: the base follows the biased image (darker base where the image got brighter),
    # with the clean base's values only (its histogram kept) and the background untouched
    biased = torch.where(head, image + 0.6 * (xx - 20) / 20, image)
    new = rank_base(biased, base)
    assert torch.equal(new[~head], base[~head])
    np.testing.assert_allclose(np.sort(new[head].numpy()), np.sort(base[head].numpy()))
    right, left = head & (xx > 28), head & (xx < 12)
    assert (new - base)[right].mean() < -0.1 < 0.1 < (new - base)[left].mean()


def test_augment_base_lets_the_intensity_changes_reach_the_base(tmp_path: Path) -> None:
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.training import DomainData, SliceDataset, prepare_domains

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    a = DomainData(sorted((tmp_path / "t1").glob("*.nii.gz")), progress=False)
    b = DomainData(sorted((tmp_path / "t2").glob("*.nii.gz")), progress=False)
    model = ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="base")
    old_config = TrainConfig(size=24, paired=True, model=model, intensity_augment=True)
    pairs, _ = prepare_domains(a, b, old_config)
    old = SliceDataset(a, b, old_config, pairs)
    new = SliceDataset(a, b, TrainConfig(size=24, paired=True, model=model, intensity_augment=True,
                                         augment_base=True), pairs)
    reached = 0
    for k in range(10):
        p, q = old[k], new[k]
        # the same slice, the same augmented image, the same clean targets
        assert torch.equal(p["a"][0], q["a"][0]) and torch.equal(p["a_target"], q["a_target"])
        # without --augment-base the base is the clean one: the network (which reads the base) never saw the change
        assert torch.equal(p["a"][1], p["a_target"][1])
        reached += int(not torch.allclose(q["a"][1], q["a_target"][1], atol=1e-3))
    assert reached >= 4


def test_plan_line_says_which_augmentations_run() -> None:
    from medsynth.config import CPU_PAIRED_RECIPE, ModelConfig, TrainConfig
    from medsynth.training import Plan

    model = ModelConfig(generator="resnet6", residual="invert", residual_input="base")
    config = TrainConfig(paired=True, model=model, lambda_adv=0, lambda_cycle=0, lambda_ssim=30, steps=10,
                         intensity_augment=True, augment_base=True, lesion_augment=0.5)
    line = Plan(config, torch.device("cpu"), False, 1, pairs=[(0, 0), (1, 1)]).line()
    assert ("paired L1 x 10 + SSIM x 30 (2 pairs), intensity augmentation (into the base) and synthetic lesions "
            "in 50% of pairs;") in line
    config.augment_base, config.lesion_augment = False, 0.0
    line = Plan(config, torch.device("cpu"), False, 1, pairs=[(0, 0)]).line()
    assert "(1 pair), intensity augmentation;" in line and "lesions" not in line
    # the CPU recipe with --paired turns both on
    assert CPU_PAIRED_RECIPE["augment_base"] and CPU_PAIRED_RECIPE["intensity_augment"]
    assert CPU_PAIRED_RECIPE["lesion_augment"] == 0.5
    config.lesion_augment, config.lesion_site = 0.5, "white"
    assert "synthetic lesions in 50% of pairs (in white matter);" in Plan(config, torch.device("cpu"), False, 1,
                                                                        pairs=[(0, 0)]).line()
    config.lambda_histogram = 10.0
    assert "paired L1 x 10 + SSIM x 30 + histogram x 10 (1 pair)" in Plan(config, torch.device("cpu"), False, 1,
                                                                          pairs=[(0, 0)]).line()
    # unpaired volumes: how many of each domain, and which terms see them
    config.lambda_adv = 1.0
    line = Plan(config, torch.device("cpu"), False, 1, pairs=[(0, 0)], unpaired=(10, 0)).line()
    assert "+ 10 t1 unpaired volumes (adversarial term only);" in line, line
    assert "1 t2 unpaired volume (adversarial term only)" in Plan(config, torch.device("cpu"), False, 1,
                                                                  pairs=[(0, 0)], unpaired=(0, 1)).line()


def test_loss_weights_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    a, b = str(tmp_path / "t1"), str(tmp_path / "t2")
    for option, value in (("--lambda-histogram", "-1"), ("--lambda-ssim", "nan"), ("--lambda-paired", "-0.5")):
        line = _bad(tmp_path, capsys, [a], [b], ("--paired", option, value))
        assert option in line and "finite number, not negative" in line


def test_base_smooth_trains_converts_and_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medsynth.inference import Translator

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "3", "--paired", "--residual", "invert", "--residual-input", "base",
                       "--base-smooth", "0.7", "--lambda-adv", "0", "--lambda-cycle", "0", "--sample-every", "3"])
    assert code == 0, capsys.readouterr().err
    assert "smoothed in-plane (Gaussian 0.7 px)" in capsys.readouterr().err
    translator = Translator.from_file(run / "model.pt", device="cpu")
    assert translator.config.model.base_smooth == 0.7
    assert translator.networks["t1-to-t2"].smooth == 0.7
    out = translator.translate(sorted((tmp_path / "t1").glob("*.nii.gz"))[0])
    assert out.array.shape == (30, 34, 12) and np.isfinite(out.array).all()
    a, b = str(tmp_path / "t1"), str(tmp_path / "t2")
    for value in ("-1", "nan"):
        line = _bad(tmp_path, capsys, [a], [b], ("--paired", "--residual", "invert", "--base-smooth", value))
        assert "--base-smooth" in line and "finite number, not negative" in line
    line = _bad(tmp_path, capsys, [a], [b], ("--paired", "--residual", "none", "--base-smooth", "1"))
    assert "--base-smooth" in line and "residual" in line


# ------------------------------------------------------------------------- unpaired volumes beside the pairs


def test_unpaired_volumes_add_slices_and_leave_the_pairs_samples_alone(tmp_path: Path) -> None:
    from conftest import phantom

    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.training import DomainData, SliceDataset, pair_volumes, prepare_domains

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    extra_path = tmp_path / "extra" / "other_t1.nii.gz"
    extra_path.parent.mkdir()
    nib.save(nib.Nifti1Image(phantom((26, 28, 10), 7, "t1"), np.eye(4)), extra_path)
    config = TrainConfig(size=24, paired=True, intensity_augment=True, augment_base=True,
                         model=ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="base"))

    def dataset(with_extra: bool) -> SliceDataset:
        a = DomainData(sorted((tmp_path / "t1").glob("*.nii.gz")), progress=False)
        b = DomainData(sorted((tmp_path / "t2").glob("*.nii.gz")), progress=False)
        pairs, quantiles = prepare_domains(a, b, config)
        extra = None
        if with_extra:
            extra = DomainData([extra_path], progress=False)
            extra.add_base(quantiles[1], quantiles[0])
        return SliceDataset(a, b, config, pairs, extra_a=extra)

    plain, mixed = dataset(False), dataset(True)
    for k in range(6):
        p, m = plain[k], mixed[k]
        assert set(m) == set(p) | {"extra_a"}
        for key in p:
            assert torch.equal(p[key], m[key]), (k, key)
        # laid out as the pairs' A slices: image, base, standardised image; cropped to --size; tissue in it
        assert m["extra_a"].shape == m["a"].shape == (3, 24, 24)
        assert (m["extra_a"][0] > -0.8).sum() > 50
    # one random stream per sample: drawn again, the same slice
    assert torch.equal(mixed[3]["extra_a"], mixed[3]["extra_a"])


def test_unpaired_volumes_train_and_are_kept_in_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import phantom

    for i in range(2):
        _pair(tmp_path, f"case{i}", seed=i)
    extra = tmp_path / "healthy"
    extra.mkdir()
    for i in range(2):
        nib.save(nib.Nifti1Image(phantom((26, 28, 10), 10 + i, "t1"), np.eye(4)), extra / f"h{i}_t1.nii.gz")
    run = tmp_path / "run"
    code = train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(run), *TINY,
                       "--steps", "3", "--paired", "--residual", "invert", "--residual-input", "base",
                       "--unpaired-t1", str(extra), "--lambda-adv", "1", "--lambda-cycle", "10",
                       "--lambda-identity", "0", "--intensity-augment", "--sample-every", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    plan = err.split("plan:")[1].splitlines()[0]
    assert "adversarial + cycle + paired L1" in plan and "2 t1 unpaired volumes (adversarial and cycle terms only)" in plan
    # the sample grid shows the unpaired head too: two pairs' and one unpaired T1 row, two T2 rows (whole slices
    # padded to x 30 -> 32, y 34 -> 36)
    grid = np.asarray(PILImage.open(run / "samples" / "step_0000003.png"))
    assert _first_tile(grid, (36, 32), 5, 3).std() > 0
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["config"]["extra_a"] == [str((extra / f"h{i}_t1.nii.gz").absolute()) for i in range(2)]
    # the model's statistics are the pairs' alone: the same as a run without the unpaired volumes
    again = tmp_path / "again"
    assert train_main(["--t1", str(tmp_path / "t1"), "--t2", str(tmp_path / "t2"), "--out", str(again), *TINY,
                       "--steps", "1", "--paired", "--residual", "invert", "--residual-input", "base",
                       "--lambda-adv", "1", "--lambda-cycle", "10"]) == 0
    assert torch.load(again / "model.pt", weights_only=True)["stats"] == model["stats"]


def test_unpaired_volumes_need_pairs_and_a_term_that_sees_them(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    a, b = (str(p) for p in _pair(tmp_path, "case0"))
    line = _bad(tmp_path, capsys, [a], [b], ("--unpaired-t1", a, "--lambda-adv", "1"))
    assert line.startswith("error: --unpaired-a: ") and "--paired" in line
    line = _bad(tmp_path, capsys, [a], [b], ("--paired", "--unpaired-t2", b, "--lambda-adv", "0",
                                             "--lambda-cycle", "0"))
    assert line.startswith("error: --unpaired-b: ") and "--lambda-adv" in line
    missing = tmp_path / "nowhere"
    line = _bad(tmp_path, capsys, [a], [b], ("--paired", "--unpaired-t1", str(missing), "--lambda-adv", "1"))
    assert str(missing) in line
