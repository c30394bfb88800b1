"""Output calibration curves: fitting, applying, the model file, ``medsynth-calibrate`` and ``--no-calibration``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsynth.calibration import (LEVELS, OutputCurve, calibrate_model, fit_curve, foreground, normalised_range,
                                  quantile_function)
from medsynth.errors import InputError
from medsynth.inference import Translator


def _brain(seed: int, shape: tuple[int, int, int] = (24, 28, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A T2-like volume (three tissue levels and noise in an ellipsoid) and its brain mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    mask = r < 0.95
    vol = np.where(r < 0.35, 1200.0, np.where(r < 0.7, 350.0, 650.0)) + rng.normal(0, 20, shape)
    return np.where(mask, vol, 0.0).astype(np.float32), mask


def _compress(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A monotone distortion of the kind the packaged model shows: the bright end squeezed, the middle lifted."""
    lo, hi = normalised_range(x, mask)
    u = np.clip((x - lo) / (hi - lo), 0, 1)
    return np.where(mask, 100 + 900 * np.sqrt(u), 0).astype(np.float32)


def test_a_curve_fitted_on_some_heads_undoes_the_same_distortion_on_another():
    heads = [_brain(s) for s in (1, 2)]
    curve = fit_curve([_compress(v, m) for v, m in heads], [m for _, m in heads], [v for v, _ in heads],
                      [m for _, m in heads])
    real, mask = _brain(3)
    output = _compress(real, mask)
    calibrated = curve.apply(output, mask)
    truth = quantile_function(real, mask)
    before = np.abs(quantile_function(output, mask) - truth).mean()
    after = np.abs(quantile_function(calibrated, mask) - truth).mean()
    assert before > 0.1
    assert after < before / 5
    # outside the mask nothing moves
    np.testing.assert_array_equal(calibrated[~mask], output[~mask])
    # rank order inside is kept (a monotone map): the brightest voxel stays the brightest
    assert np.argmax(np.where(mask, calibrated, -np.inf)) == np.argmax(np.where(mask, output, -np.inf))


def test_an_output_already_like_its_targets_gets_a_curve_near_the_identity():
    heads = [_brain(s) for s in (4, 5)]
    curve = fit_curve([v for v, _ in heads], [m for _, m in heads], [v for v, _ in heads], [m for _, m in heads])
    assert len(curve.x) == LEVELS
    np.testing.assert_allclose(curve.x, curve.y, atol=1e-9)
    real, mask = _brain(6)
    np.testing.assert_allclose(curve.apply(real, mask), real, rtol=1e-5, atol=1e-2)


def test_curves_check_their_knots_and_round_trip_through_dicts():
    with pytest.raises(ValueError, match="non-decreasing"):
        OutputCurve([0.0, 0.5, 0.4], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="equally long"):
        OutputCurve([0.0, 1.0], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="finite"):
        OutputCurve([0.0, float("nan")], [0.0, 1.0])
    curve = OutputCurve([0.0, 0.5, 1.0], [0.0, 0.2, 1.0], ["a/t1.nii.gz"], ["a/t2.nii.gz"])
    assert OutputCurve.from_dict(curve.to_dict()) == curve
    # a mask without tissue leaves the array as it is
    x = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(curve.apply(x, np.zeros(8, bool)), x)
    with pytest.raises(ValueError, match="spread"):
        quantile_function(np.ones(8), np.ones(8, bool))


def _save(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


@pytest.fixture
def pairs(tmp_path: Path, make_volume) -> tuple[list[Path], list[Path]]:
    """Two phantom heads as T1 and T2 (the same shapes, the tissue levels of each contrast)."""
    t1 = [make_volume(tmp_path / "site", f"s{i}_t1.nii.gz", seed=i, contrast="t1") for i in (1, 2)]
    t2 = [make_volume(tmp_path / "site", f"s{i}_t2.nii.gz", seed=i, contrast="t2") for i in (1, 2)]
    return t1, t2


def test_calibrate_model_writes_a_new_model_whose_output_takes_the_targets_histogram(
        tmp_path: Path, identity_model: Path, pairs, make_volume):
    t1, t2 = pairs
    before = identity_model.read_bytes()
    out = calibrate_model(identity_model, t1, t2, tmp_path / "calibrated.pt", "t1-to-t2", device="cpu")
    assert identity_model.read_bytes() == before  # the input model is never changed
    plain = Translator.from_file(identity_model, device="cpu")
    calibrated = Translator.from_file(out, device="cpu")
    assert calibrated.calibrated == ["t1-to-t2"] and plain.calibrated == []
    assert calibrated.info()["calibrated"] == ["t1-to-t2"]
    assert calibrated.curves["t1-to-t2"].sources == ["s1_t1.nii.gz", "s2_t1.nii.gz"]
    # an unseen head: its calibrated translation's histogram is far nearer a real T2's than the plain one
    new_t1 = make_volume(tmp_path / "new", "t1.nii.gz", seed=7, contrast="t1")
    new_t2 = make_volume(tmp_path / "new", "t2.nii.gz", seed=7, contrast="t2")
    mask = foreground(nib.load(str(new_t1)).get_fdata())
    truth = quantile_function(nib.load(str(new_t2)).get_fdata(), mask)
    y_plain = plain.translate(new_t1, direction="t1-to-t2").array
    y_cal = calibrated.translate(new_t1, direction="t1-to-t2").array
    assert np.abs(quantile_function(y_cal, mask) - truth).mean() < 0.5 * np.abs(
        quantile_function(y_plain, mask) - truth).mean()
    # the other direction, and the switch, give the network's output as it is
    np.testing.assert_array_equal(calibrated.translate(new_t1, direction="t2-to-t1").array,
                                  plain.translate(new_t1, direction="t2-to-t1").array)
    off = Translator.from_file(out, device="cpu", calibrate=False)
    np.testing.assert_array_equal(off.translate(new_t1, direction="t1-to-t2").array, y_plain)
    # a second direction is added beside the first
    both = calibrate_model(out, t2, t1, tmp_path / "both.pt", "t2-to-t1", device="cpu")
    assert Translator.from_file(both, device="cpu").calibrated == ["t1-to-t2", "t2-to-t1"]


def test_calibrate_refuses_bad_requests_and_writes_nothing(tmp_path: Path, identity_model: Path, pairs):
    t1, t2 = pairs
    with pytest.raises(InputError, match="input model"):
        calibrate_model(identity_model, t1, t2, identity_model, device="cpu")
    with pytest.raises(InputError, match="unknown direction|direction"):
        calibrate_model(identity_model, t1, t2, tmp_path / "a.pt", "t1-to-ct", device="cpu")
    empty = _save(tmp_path / "empty.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(InputError, match="empty.nii.gz|constant|tissue"):
        calibrate_model(identity_model, [empty], t2, tmp_path / "b.pt", device="cpu")
    (tmp_path / "exists.pt").write_bytes(b"keep")
    with pytest.raises(InputError, match="exists"):
        calibrate_model(identity_model, t1, t2, tmp_path / "exists.pt", device="cpu")
    assert (tmp_path / "exists.pt").read_bytes() == b"keep"
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == ["exists.pt"]


def test_a_damaged_curve_in_a_model_file_is_a_clear_error(tmp_path: Path, identity_model: Path):
    import torch

    payload = torch.load(identity_model, weights_only=True)
    payload["calibration"] = {"t1-to-t2": {"x": [0.0, 1.0, 0.5], "y": [0.0, 0.5, 1.0]}}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="bad.pt.*damaged"):
        Translator.from_file(tmp_path / "bad.pt", device="cpu")
    payload["calibration"] = {"t1-to-ct": {"x": [0.0, 1.0], "y": [0.0, 1.0]}}
    torch.save(payload, tmp_path / "bad2.pt")
    with pytest.raises(InputError, match="unknown directions"):
        Translator.from_file(tmp_path / "bad2.pt", device="cpu")


def test_the_cli_calibrates_and_convert_can_skip_the_curve(tmp_path: Path, identity_model: Path, pairs, capsys):
    from medsynth.cli import calibrate_main, convert_main

    t1, t2 = pairs
    out = tmp_path / "cal.pt"
    assert calibrate_main(["--model", str(identity_model), "--source", str(t1[0].parent / "s*_t1.nii.gz"),
                           "--target", *map(str, t2), "--out", str(out), "--device", "cpu",
                           "--progress", "none"]) == 0
    assert "t1-to-t2: output at 10/50/90 %" in capsys.readouterr().err
    assert calibrate_main(["--model", str(identity_model), "--source", *map(str, t1), "--target", *map(str, t2),
                           "--out", str(out), "--progress", "none"]) == 2
    assert "exists" in capsys.readouterr().err
    assert calibrate_main(["--model", str(identity_model), "--source", str(tmp_path / "missing.nii.gz"),
                           "--target", *map(str, t2), "--out", str(tmp_path / "x.pt"), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.nii.gz" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
    on, off = tmp_path / "on.nii.gz", tmp_path / "off.nii.gz"
    assert convert_main([str(t1[0]), str(on), "--model", str(out), "--direction", "t1-to-t2",
                         "--progress", "none"]) == 0
    assert convert_main([str(t1[0]), str(off), "--model", str(out), "--direction", "t1-to-t2", "--no-calibration",
                         "--progress", "none"]) == 0
    plain = Translator.from_file(identity_model, device="cpu").translate(t1[0], direction="t1-to-t2").array
    np.testing.assert_allclose(nib.load(str(off)).get_fdata(), plain, rtol=1e-6)
    assert np.abs(nib.load(str(on)).get_fdata() - plain).max() > 1.0


def test_the_curve_can_be_switched_for_one_call(tmp_path: Path, identity_model: Path, pairs, make_volume):
    t1, t2 = pairs
    out = calibrate_model(identity_model, t1, t2, tmp_path / "cal.pt", "t1-to-t2", device="cpu")
    head = make_volume(tmp_path / "new", "t1.nii.gz", seed=7, contrast="t1")
    plain = Translator.from_file(identity_model, device="cpu").translate(head, direction="t1-to-t2").array
    on, off = Translator.from_file(out, device="cpu"), Translator.from_file(out, device="cpu", calibrate=False)
    with_curve = on.translate(head, direction="t1-to-t2").array
    assert np.abs(with_curve - plain).max() > 1.0
    # per call, either way round; the translator's own setting is left as it was
    np.testing.assert_array_equal(on.translate(head, direction="t1-to-t2", calibrate=False).array, plain)
    np.testing.assert_array_equal(off.translate(head, direction="t1-to-t2", calibrate=True).array, with_curve)
    assert on.calibrated == ["t1-to-t2"] and off.calibrated == []
    written = off.translate_file(head, tmp_path / "o.nii.gz", direction="t1-to-t2", calibrate=True)
    np.testing.assert_allclose(nib.load(str(written)).get_fdata(), with_curve, rtol=1e-6)
    failures = on.translate_files([head], tmp_path / "batch", direction="t1-to-t2", calibrate=False)
    assert failures == []
    np.testing.assert_allclose(nib.load(str(tmp_path / "batch" / "t1.nii.gz")).get_fdata(), plain, rtol=1e-6)


def test_export_model_and_packaging_keep_a_curve(tmp_path: Path):
    import torch

    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.cyclegan import export_model
    from medsynth.networks import build_generator

    config = TrainConfig(model=ModelConfig(generator="identity"), size=32)
    nets = [build_generator(config.model) for _ in range(2)]
    stats = {n: {"lo": 100.0, "hi": 900.0, "background": 0.0, "threshold": 10.0} for n in ("t1", "t2")}
    curve = OutputCurve([0.0, 0.5, 1.0], [0.0, 0.3, 1.0], ["a/t1.nii.gz"], ["a/t2.nii.gz"])
    path = export_model(tmp_path / "m.pt", config, nets[0], nets[1], stats,
                        calibration={"t2-to-t1": curve.to_dict()}, half=True)
    assert torch.load(path, weights_only=True)["calibration"]["t2-to-t1"]["y"] == [0.0, 0.3, 1.0]
    translator = Translator.from_file(path, device="cpu")
    assert translator.calibrated == ["t2-to-t1"] and translator.curves["t2-to-t1"] == curve
    plain = export_model(tmp_path / "plain.pt", config, nets[0], nets[1], stats)
    assert "calibration" not in torch.load(plain, weights_only=True)
