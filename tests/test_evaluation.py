"""Tests for medsynth.evaluation: metric values on hand-made arrays, the baseline, pairing, and medsynth-eval."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsynth.cli.eval import main
from medsynth.errors import InputError
from medsynth.evaluation import (
    baseline_translate,
    case_id,
    ct_metrics,
    evaluate,
    foreground_mask,
    masked_metrics,
    normalise_in_mask,
    pair_cases,
    region_metrics,
    ssim_map,
)

SHAPE = (36, 34, 32)


def smooth_field(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth random image in [0.1, 0.8]: structure for SSIM, room for a +0.1 offset without clipping."""
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    return (0.1 + 0.7 * x).astype(np.float32)


def ball(shape: tuple[int, ...] = SHAPE, radius: float = 0.8) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g**2 for g in grids) < radius**2


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


# ------------------------------------------------------------------------------------------ metric values


def test_perfect_prediction() -> None:
    ref = smooth_field() * ball()
    m = masked_metrics(ref.copy(), ref)
    assert m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["mae"] == 0.0


def test_constant_offset_is_20_db_without_normalisation_and_removed_with_it() -> None:
    ref = smooth_field()
    mask = ball()
    m = masked_metrics(ref + np.float32(0.1), ref, mask, normalise=False)
    assert m["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert m["mae"] == pytest.approx(0.1, abs=1e-6)
    assert m["ssim"] < 1.0  # luminance term sees the offset
    # each image is normalised by its own percentiles, so an offset (or a gain) is not an error
    m = masked_metrics(3.0 * ref + 7.0, ref, mask, normalise=True)
    assert m["psnr"] > 100 and m["mae"] < 1e-5


def test_gaussian_noise_psnr_and_ssim() -> None:
    ref = smooth_field()
    mask = ball()
    rng = np.random.default_rng(1)
    ssims = []
    for sigma in (0.01, 0.03, 0.1, 0.2):
        pred = ref + rng.normal(0, sigma, ref.shape).astype(np.float32)
        m = masked_metrics(pred, ref, mask, normalise=False)
        assert m["psnr"] == pytest.approx(-20 * math.log10(sigma), abs=0.3)
        assert m["mae"] == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.05)
        ssims.append(m["ssim"])
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    assert 0.0 < ssims[-1] < ssims[0] < 1.0


def test_errors_outside_the_mask_do_not_count() -> None:
    ref = smooth_field()
    mask = ball(radius=0.6)
    pred = ref.copy()
    pred[~mask] = np.random.default_rng(2).uniform(0, 50, int((~mask).sum()))
    m = masked_metrics(pred, ref, mask)
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0, abs=1e-6) and m["mae"] == 0.0
    # the same corruption counts when the mask covers it
    m = masked_metrics(pred, ref, ball(radius=0.9))
    assert m["psnr"] < 20 and m["ssim"] < 0.9


def test_default_mask_is_reference_foreground() -> None:
    ref = smooth_field() * ball()
    ref[ball(radius=0.85) & ~ball()] = -3.0  # interpolation ringing below a 0 background: not foreground
    assert np.array_equal(foreground_mask(ref), ref > 0)
    pred = ref + 100 * (ref <= 0)  # wrong only outside the reference foreground
    assert masked_metrics(pred, ref)["mae"] == 0.0
    ct = np.where(ball(), 40.0, -1000.0)
    assert np.array_equal(foreground_mask(ct), ball())


def test_normalise_in_mask() -> None:
    x = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = x >= 500
    y = normalise_in_mask(x, mask)
    lo, hi = np.percentile(x[mask], [0.5, 99.5])
    assert y.min() == 0.0 and y.max() == 1.0
    assert y[mask].mean() == pytest.approx(0.5, abs=1e-3)
    assert y.flat[700] == pytest.approx((700 - lo) / (hi - lo), rel=1e-5)
    assert np.all(y[~mask] == 0.0)  # below the mask's 0.5 percentile
    assert np.all(normalise_in_mask(np.full((4, 4, 4), 5.0), np.ones((4, 4, 4), bool)) == 0.0)
    with pytest.raises(ValueError, match="empty"):
        normalise_in_mask(x, np.zeros_like(mask))


def test_ssim_map_matches_monai_and_skimage_in_the_interior() -> None:
    import torch
    from monai.metrics.regression import compute_ssim_and_cs
    from skimage.metrics import structural_similarity

    x = smooth_field(seed=3)
    y = np.clip(x + np.random.default_rng(4).normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    ours = ssim_map(x, y)
    assert ours.shape == x.shape
    inner = (slice(5, -5),) * 3
    monai_map, _ = compute_ssim_and_cs(
        torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None], 3, [11] * 3, [1.5] * 3
    )
    # MONAI casts to float32 and sums a dense 11^3 kernel: it agrees to ~4e-4 on this smooth image
    np.testing.assert_allclose(ours[inner], monai_map[0, 0].numpy(), atol=1e-3)
    _, sk_map = structural_similarity(
        x.astype(np.float64),
        y.astype(np.float64),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    np.testing.assert_allclose(ours[inner], sk_map[inner], atol=1e-4)
    # a 2D image is a volume of one slice
    two_d = ssim_map(x[:, :, 0], y[:, :, 0])
    np.testing.assert_allclose(two_d, ssim_map(x[:, :, :1], y[:, :, :1])[:, :, 0], atol=1e-6)
    # masked_metrics computes the map on the mask's bounding box only: the same mean as the full map
    mask = ball(radius=0.5)
    full = ssim_map(x * mask, y * mask)[mask].mean()
    assert masked_metrics(x, y, mask, normalise=False)["ssim"] == pytest.approx(full, abs=1e-6)


def test_ct_metrics_synthrad_definitions() -> None:
    body = ball()
    ref = np.where(body, 40.0, -1024.0).astype(np.float32)
    ref[body & ball(radius=0.4)] = 1200.0  # bone
    perfect = ct_metrics(ref, ref, None)
    assert perfect["mae_hu"] == 0 and perfect["psnr_hu"] == math.inf
    assert perfect["ssim_hu"] == pytest.approx(1.0, abs=1e-6)
    m = ct_metrics(ref + 50.0 * body, ref, body)
    assert m["mae_hu"] == pytest.approx(50.0)
    assert m["psnr_hu"] == pytest.approx(20 * math.log10(4024 / 50), abs=1e-4)
    # clipping to [-1024, 3000] HU: a prediction of 6000 HU where the truth is >= 3000 is no error
    ref_hot = np.where(body, 3500.0, -1024.0).astype(np.float32)
    assert ct_metrics(np.where(body, 6000.0, -2000.0), ref_hot, None)["mae_hu"] == 0.0


# --------------------------------------------------------------------------------------------- baseline


def test_baseline_scores_high_when_t2_is_inverted_t1() -> None:
    mask = ball()
    t1 = (smooth_field(seed=5) * 1000) * mask
    t2 = (2000.0 - 1.7 * t1) * mask  # a monotone decreasing map of T1 inside the head
    base = baseline_translate(t1, t2, mask)
    assert base.shape == t2.shape and base.dtype == np.float32
    assert np.all(base[~mask] == t2.min())
    good = masked_metrics(base, t2, mask)
    assert good["psnr"] > 35 and good["ssim"] > 0.98
    # the same method fails when the contrasts are not inverted: the test can tell the difference
    bad = masked_metrics(baseline_translate(t1, t1, mask), t1, mask)
    assert bad["psnr"] < good["psnr"] - 20 and bad["ssim"] < 0.5


def test_baseline_on_real_t1_t2(shared_data: Path) -> None:
    """The README says the T1->T2 baseline gets 12-17 dB; every second voxel only, to keep it fast."""
    from medsynth.io import load_image

    case = shared_data / "brain_t1t2" / "BraTS-GLI-00001-000"
    if not case.is_dir():
        pytest.skip(f"{case} is absent")
    every_2nd = (slice(None, None, 2),) * 3
    t1 = load_image(case / "t1.nii.gz").array[every_2nd]
    t2 = load_image(case / "t2.nii.gz").array[every_2nd]
    mask = (t1 > 0) & (t2 > 0)
    m = masked_metrics(baseline_translate(t1, t2, mask), t2, mask)
    assert 10.0 < m["psnr"] < 20.0, m
    assert 0.1 < m["ssim"] < 0.9, m


# ---------------------------------------------------------------------------------------------- pairing


@pytest.mark.parametrize(
    "path, case",
    [
        ("out/BraTS-001_t2.nii.gz", "BraTS-001"),
        ("data/BraTS-001/t2.nii.gz", "BraTS-001"),
        ("out/BraTS-001_t1-to-t2.nii.gz", "BraTS-001"),
        ("out/BraTS-001/t1-to-t2.nii.gz", "BraTS-001"),
        ("x/sub-01_T1w_pred.mha", "sub-01"),
        ("x/BraTS-GLI-00001-000-t2w.nii.gz", "BraTS-GLI-00001-000"),
        ("x/patient7.nrrd", "patient7"),
        ("x/IXI002-Guys-0828-T1_ds.nii.gz", "IXI002-Guys-0828-T1_ds"),
    ],
)
def test_case_id(path: str, case: str) -> None:
    assert case_id(path) == case


def test_pair_cases() -> None:
    preds = ["p/b_t2.nii.gz", "p/A_t2.nii.gz"]
    refs = ["r/a/t2.nii.gz", "r/b/t2.nii.gz", "r/c/t2.nii.gz"]  # c has no prediction: ignored
    pairs = pair_cases(preds, refs, source_files=["s/a/t1.nii.gz", "s/b/t1.nii.gz"])
    assert [(c, p.name, r.parent.name, s.parent.name, m) for c, p, r, s, m in pairs] == [
        ("b", "b_t2.nii.gz", "b", "b", None),
        ("A", "A_t2.nii.gz", "a", "a", None),
    ]
    assert pairs[0].ref == Path("r/b/t2.nii.gz") and pairs[0].mask is None
    # one prediction and one reference pair whatever their names
    assert pair_cases(["out.nii.gz"], ["r/x/t2.nii.gz"])[0][2] == Path("r/x/t2.nii.gz")
    with pytest.raises(InputError, match=r"p/b_t2.nii.gz: no reference file for case 'b'"):
        pair_cases(preds, ["r/a/t2.nii.gz", "r/c/t2.nii.gz"])
    with pytest.raises(InputError, match="no source file for case 'A'"):
        pair_cases(preds, refs, source_files=["s/b/t1.nii.gz", "s/c/t1.nii.gz"])
    with pytest.raises(InputError, match="given twice"):
        pair_cases(preds, ["r/a/t1.nii.gz", "r/a/t2.nii.gz", "r/b/t2.nii.gz"])


# ------------------------------------------------------------------------------------------ command line


def make_cases(root: Path) -> dict[str, Path]:
    """Two cases: 'alpha' predicted perfectly, 'beta' with noise; references, sources and predictions."""
    mask = ball((20, 24, 16), 0.85)
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    for i, case in enumerate(("alpha", "beta")):
        t1 = (smooth_field((20, 24, 16), seed=10 + i) * 1000) * mask
        t2 = (1500 - t1 + 300 * smooth_field((20, 24, 16), seed=20 + i)) * mask  # not only inverted T1
        save_nifti(root / "ref" / case / "t2.nii.gz", t2, affine)
        save_nifti(root / "src" / case / "t1.nii.gz", t1, affine)
        noise = np.random.default_rng(i).normal(0, 60, t2.shape) if case == "beta" else 0.0
        save_nifti(root / "pred" / f"{case}_t1-to-t2.nii.gz", (t2 + noise) * mask, affine)
    return {k: root / k for k in ("ref", "src", "pred")}


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_cases(tmp_path)
    out = tmp_path / "report"
    argv = ["--pred", str(d["pred"]), "--ref", str(d["ref"]), "--source", str(d["src"]), "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert lines[0].split()[:5] == ["case", "psnr", "ssim", "mae", "baseline_psnr"]
    alpha = next(line for line in lines if line.startswith("alpha")).split()
    assert alpha[1] == "inf" and float(alpha[2]) == pytest.approx(1.0) and float(alpha[3]) == 0.0
    assert any(line.startswith("beta") for line in lines) and any(line.startswith("mean") for line in lines)

    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == ["alpha", "beta", "mean"]
    beta = rows[1]
    assert 10 < float(beta["psnr"]) < 40 and float(beta["baseline_psnr"]) > 10
    assert float(beta["psnr_gain"]) == pytest.approx(float(beta["psnr"]) - float(beta["baseline_psnr"]))

    report = json.loads((out / "metrics.json").read_text())
    assert report["arguments"]["argv"] == ["medsynth-eval", *argv]
    assert [c["case"] for c in report["cases"]] == ["alpha", "beta"]
    assert report["cases"][0]["psnr"] is None  # infinite PSNR is written as null
    assert report["mean"]["ssim"] == pytest.approx(float(rows[2]["ssim"]))
    assert report["cases"][1]["source"].endswith("beta/t1.nii.gz")

    from PIL import Image

    for case in ("alpha", "beta"):
        with Image.open(out / f"{case}.png") as png:
            assert png.format == "PNG" and png.width > 600 and png.height > 400
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "beta.png", "metrics.csv", "metrics.json"]


def test_fair_baseline_from_the_models_training_histograms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_residual_model

    from medsynth.inference import fair_baseline_translator

    d = make_cases(tmp_path)
    model = write_residual_model(tmp_path / "model.pt")
    argv = ["--pred", str(d["pred"]), "--ref", str(d["ref"]), "--source", str(d["src"]), "--model", str(model)]
    assert main(argv) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "fair_baseline_psnr" in header and "fair_psnr_gain" in header and "baseline_psnr" in header
    rows = evaluate(str(d["pred"]), str(d["ref"]), source=str(d["src"]), model=model)
    beta = rows[1]
    # exactly what the fair baseline translator gives, scored like a prediction
    fair = fair_baseline_translator(model).translate(d["src"] / "beta" / "t1.nii.gz").array
    from medsynth.io import load_image

    ref = load_image(d["ref"] / "beta" / "t2.nii.gz").array
    mask = foreground_mask(ref) & foreground_mask(load_image(d["src"] / "beta" / "t1.nii.gz").array)
    assert beta["fair_baseline_psnr"] == pytest.approx(masked_metrics(fair, ref, mask)["psnr"])
    # the oracle (matched to the reference itself) is at least as good as a fixed training histogram here
    assert beta["baseline_ssim"] >= beta["fair_baseline_ssim"] - 0.05
    assert beta["fair_psnr_gain"] == pytest.approx(beta["psnr"] - beta["fair_baseline_psnr"])


def test_evaluate_ct_target_and_given_mask(tmp_path: Path) -> None:
    body = ball((20, 24, 16), 0.8)
    ref = np.where(body, 40.0, -1024.0)
    ref[ball((20, 24, 16), 0.3)] = 900.0
    save_nifti(tmp_path / "ref" / "c1_ct.nii.gz", ref)
    save_nifti(tmp_path / "pred" / "c1_sct.nii.gz", ref + 30.0 * body)
    inner = ball((20, 24, 16), 0.5)
    save_nifti(tmp_path / "mask" / "c1_mask.nii.gz", inner.astype(np.float32))
    (row,) = evaluate([str(tmp_path / "pred")], [str(tmp_path / "ref")])
    assert row["ct"] is True and row["mask_voxels"] == int(body.sum())
    assert row["mae_hu"] == pytest.approx(30.0)
    (row,) = evaluate([str(tmp_path / "pred")], [str(tmp_path / "ref")], mask=[str(tmp_path / "mask")], ct=False)
    assert "mae_hu" not in row and row["mask_voxels"] == int(inner.sum())


def run_bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in captured.err
    return err


def test_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_cases(tmp_path)
    only_alpha = str(d["ref"] / "alpha" / "t2.nii.gz")
    err = run_bad(["--pred", str(d["pred"]), "--ref", only_alpha, str(d["ref"] / "alpha")], capsys)
    assert "beta_t1-to-t2.nii.gz: no reference file for case 'beta'" in err

    small = save_nifti(tmp_path / "small" / "beta" / "t2.nii.gz", np.ones((8, 8, 8)) * np.arange(8))
    pred_beta = d["pred"] / "beta_t1-to-t2.nii.gz"
    err = run_bad(["--pred", str(pred_beta), "--ref", str(small)], capsys)
    assert err.startswith(f"error: {pred_beta}: shape (20, 24, 16) differs")

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    err = run_bad(["--pred", str(text), "--ref", only_alpha], capsys)
    assert err.startswith(f"error: {text}: ")

    broken = tmp_path / "broken_t2.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    err = run_bad(["--pred", str(broken), "--ref", only_alpha], capsys)
    assert err.startswith(f"error: {broken}: ")


def test_cli_subprocess_reports_error_without_traceback(tmp_path: Path) -> None:
    d = make_cases(tmp_path)
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "medsynth", "eval", "--pred", str(d["pred"]), "--ref", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: no such file or folder"]


# ------------------------------------------------------------------------------------- per-label metrics


def lesion_case(root: Path, case: str = "lesion", seed: int = 30) -> dict[str, Path]:
    """A head (ball) with two labelled regions; the prediction is the reference everywhere except label 2
    ("core"), where it is dark where the reference is bright (as a model that misses a bright lesion)."""
    shape = (28, 30, 24)
    head = ball(shape, 0.9)
    oedema = ball(shape, 0.9) & (np.indices(shape)[0] < 10) & (np.indices(shape)[1] >= 5)
    core = np.zeros(shape, bool)
    core[16:24, 10:20, 8:16] = True
    core &= head
    labels = oedema.astype(np.uint8) + 2 * core.astype(np.uint8)
    t2 = 400 + 600 * smooth_field(shape, seed=seed)
    grid = np.indices(shape)
    t2[grid[0] >= 24] = 1500  # bright CSF and a dark structure, both predicted right: they fix each image's
    t2[grid[1] < 5] = 100  # 0.5/99.5 percentiles, so the normalisation does not hinge on the lesion
    t2[core] += 600  # the bright lesion
    t2 *= head
    t1 = (1600 - t2) * head
    pred = t2.copy()
    pred[core] = 200 + 0.1 * (t2[core] - 1000)  # dark grey, with the lesion's texture kept
    return {
        "ref": save_nifti(root / "ref" / case / "t2.nii.gz", t2),
        "src": save_nifti(root / "src" / case / "t1.nii.gz", t1),
        "pred": save_nifti(root / "pred" / f"{case}_t1-to-t2.nii.gz", pred),
        "labels": save_nifti(root / "labels" / f"{case}.nii.gz", labels),
    }


def test_region_metrics_normalise_over_the_mask_not_the_region() -> None:
    ref = smooth_field() * ball()
    mask = ref > 0
    region = mask & (np.indices(SHAPE)[0] < 12)
    pred = ref.copy()
    pred[region] = 0.4 * ref[region] + 0.25  # a contrast change of the region alone
    scores = region_metrics(pred, ref, mask, {"lesion": region, "rest": mask & ~region, "none": np.zeros_like(mask)})
    # normalised inside the region alone the change would vanish; over the whole mask it is an error there
    # (the rest moves a little too: each image's percentiles over the mask change)
    assert masked_metrics(pred, ref, region)["psnr"] > 60
    assert scores["lesion"]["psnr"] < 20 < scores["rest"]["psnr"] - 5 < scores["rest"]["psnr"]
    assert scores["lesion"]["mae"] > 2 * scores["rest"]["mae"]
    assert scores["lesion"]["voxels"] == int(region.sum())
    assert math.isnan(scores["none"]["psnr"]) and scores["none"]["voxels"] == 0
    # the regions' SSIM is the whole mask's SSIM map averaged over them
    whole = region_metrics(pred, ref, mask, {"all": mask})["all"]
    full = masked_metrics(pred, ref, mask)
    assert whole["ssim"] == pytest.approx(full["ssim"], abs=1e-6) and whole["psnr"] == pytest.approx(full["psnr"])


def test_cli_labels_right_in_one_label_wrong_in_another(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = lesion_case(tmp_path)
    (tmp_path / "labels" / "labels.json").write_text('{"1": "oedema", "2": "core"}')
    out = tmp_path / "report"
    argv = ["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--source", str(tmp_path / "src"),
            "--labels", str(tmp_path / "labels"), "--out", str(out)]
    assert main(argv) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    for column in ("oedema_psnr", "core_ssim", "baseline_oedema_mae", "baseline_core_psnr"):
        assert column in header
    with open(out / "metrics.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    value = {k: float(v) for k, v in row.items() if k.endswith(("psnr", "ssim", "mae"))}
    # right in the oedema, wrong in the core: every metric says so, and the whole head lies between
    assert value["oedema_psnr"] > value["psnr"] > value["core_psnr"] + 5
    assert value["oedema_ssim"] > value["core_ssim"] + 0.2
    assert value["oedema_mae"] < value["core_mae"] / 5
    # and it says which way: the core comes out too dark (bias = mean prediction - reference)
    assert float(row["core_bias"]) < -0.3 and abs(float(row["oedema_bias"])) < 0.01
    # the oracle baseline (inverted T1 = T2 here) gets the core right: the model loses to it there only
    assert value["baseline_core_psnr"] > value["core_psnr"] + 10
    assert int(row["oedema_voxels"]) > 0 and int(row["core_voxels"]) > 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["arguments"]["label_names"] == {"1": "oedema", "2": "core"}
    assert report["cases"][0]["core_psnr"] == pytest.approx(value["core_psnr"])
    assert report["cases"][0]["labels"].endswith("lesion.nii.gz")
    # --label-names wins over labels.json; the overlay PNG beside the maps is not taken for a label map
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "labels" / "lesion.png")
    (row2,) = evaluate(str(d["pred"]), str(d["ref"]), labels=[str(tmp_path / "labels")], label_names="2=tumour core")
    assert row2["tumour_core_psnr"] == pytest.approx(value["core_psnr"]) and "label1_psnr" in row2


def test_labels_with_the_fair_baseline_and_absent_labels(tmp_path: Path) -> None:
    from conftest import write_residual_model

    d = lesion_case(tmp_path)
    model = write_residual_model(tmp_path / "model.pt")
    names = tmp_path / "names.csv"
    names.write_text("label,name\n1,oedema\n2,core\n3,necrosis\n")
    (row,) = evaluate(str(d["pred"]), str(d["ref"]), source=str(d["src"]), model=model, labels=str(d["labels"]),
                      label_names=names)
    assert row["fair_baseline_core_psnr"] > row["core_psnr"]
    assert math.isnan(row["necrosis_psnr"]) and row["necrosis_voxels"] == 0  # named, absent in this case


def test_cli_bad_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = lesion_case(tmp_path)
    base = ["--pred", str(d["pred"]), "--ref", str(d["ref"])]
    halves = save_nifti(tmp_path / "bad" / "lesion.nii.gz", np.full((28, 30, 24), 0.5))
    err = run_bad([*base, "--labels", str(halves)], capsys)
    assert err.startswith(f"error: {halves}: ") and "integers" in err
    err = run_bad([*base, "--labels", str(d["labels"]), "--label-names", "one=oedema"], capsys)
    assert err.startswith("error: --label-names: ")
    err = run_bad([*base, "--label-names", "1=oedema"], capsys)
    assert "--labels" in err
    other = save_nifti(tmp_path / "other" / "b.nii.gz", np.ones((28, 30, 24)))
    two = save_nifti(tmp_path / "other" / "c.nii.gz", np.ones((28, 30, 24)))
    err = run_bad(["--pred", str(d["pred"]), "--ref", str(d["ref"]), "--labels", str(other), str(two)], capsys)
    assert "no label map for case 'lesion'" in err
