"""``medsynth.bias``: N4 bias-field correction, in training's volume preparation and in conversion."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.bias import bias_field, correct_bias, describe_bias_correction, estimate_field, peak_mask, ras_spacing
from medsynth.errors import InputError


def _tissues(shape: tuple[int, int, int] = (48, 48, 32), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ball of two tissues (100 and 200, in slabs along the first axis) with a little noise, zero outside."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.8
    level = np.where((np.arange(shape[0]) // 6) % 2 == 0, 100.0, 200.0)[:, None, None] * np.ones(shape)
    volume = np.where(inside, level * (1 + 0.01 * rng.standard_normal(shape)), 0.0)
    return volume.astype(np.float32), inside & np.ones(shape, bool)


def _spread(volume: np.ndarray, inside: np.ndarray, clean: np.ndarray) -> float:
    """The largest coefficient of variation of one tissue's voxels."""
    return max(float(volume[inside & (clean == v)].std() / volume[inside & (clean == v)].mean())
               for v in (100.0, 200.0))


def test_n4_takes_out_a_smooth_field_and_leaves_a_flat_volume_alone() -> None:
    clean, inside = _tissues()
    levels = np.where(inside, np.round(clean / 100) * 100, 0)
    ramp = np.linspace(-1, 1, clean.shape[1])[None, :, None] + 0.5 * np.linspace(-1, 1, clean.shape[2])[None, None, :]
    field = np.exp(0.3 * ramp).astype(np.float32)
    biased = clean * field
    corrected = correct_bias(biased, (1.5, 1.5, 2.0))
    assert _spread(biased, inside, levels) > 0.12  # the clean tissues: 0.01
    assert _spread(corrected, inside, levels) < 0.03, _spread(corrected, inside, levels)
    assert np.all(corrected[~inside] == 0)
    # nothing to correct: the field stays within a few per cent of flat
    flat = bias_field(clean, (1.5, 1.5, 2.0))
    assert np.abs(flat[inside] / np.median(flat[inside]) - 1).max() < 0.05
    # a one-slice image and method none pass as they are
    np.testing.assert_array_equal(correct_bias(biased[..., :1], (1, 1, 1)), biased[..., :1])
    np.testing.assert_array_equal(correct_bias(biased, (1, 1, 1), "none"), biased)
    with pytest.raises(ValueError, match="unknown bias correction"):
        correct_bias(biased, (1, 1, 1), "n3")


def test_n4_peak_leaves_a_graded_lesion_mostly_out_of_the_field() -> None:
    """A graded bright lesion (an oedema fading into white matter) looks to N4 like part of the field; fitted on the
    histogram's main peak only, the field under it stays much nearer flat, and away from it both fields agree."""
    shape = (48, 48, 32)
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.8
    # white matter (200, the majority) with thin sheets of a darker tissue (100)
    level = np.where(np.arange(shape[0])[:, None, None] % 12 < 3, 100.0, 200.0) * np.ones(shape)
    r2 = (grids[0] - 0.3) ** 2 + (grids[1] - 0.2) ** 2 + grids[2] ** 2
    bump = np.exp(-r2 / (2 * 0.2**2))
    lesion, far = bump > 0.3, r2 > 4 * 0.2**2
    volume = np.where(inside, level * (1 + bump) * (1 + 0.01 * rng.standard_normal(shape)), 0).astype(np.float32)
    band = peak_mask(volume)
    assert not (band & lesion).any() and not (band & ~inside).any()
    assert (band & inside & (level == 200) & far).sum() > 0.9 * (inside & (level == 200) & far).sum()
    assert not (band & (level == 100) & far).any()
    spacing = (2.0, 2.0, 3.0)
    fields = {m: estimate_field(volume, spacing, m) for m in ("n4", "n4-peak")}
    under = {m: float(np.median(f[lesion]) / np.median(f[inside & far])) for m, f in fields.items()}
    assert under["n4"] > 1.3, under  # the lesion is 1.3-2x its surroundings: N4 takes most of it into the field
    assert under["n4-peak"] < 1.2 and under["n4"] - under["n4-peak"] > 0.15, under
    # away from the lesion the two fits agree (each scaled to median 1 there)
    ratio = (fields["n4"] / fields["n4-peak"])[inside & far]
    assert np.abs(ratio / np.median(ratio) - 1).max() < 0.1, np.abs(ratio / np.median(ratio) - 1).max()
    # no lesion and no field: nothing to correct
    plain = np.where(inside, level * (1 + 0.01 * rng.standard_normal(shape)), 0).astype(np.float32)
    flat = estimate_field(plain, spacing, "n4-peak")
    assert np.abs(flat[inside] / np.median(flat[inside]) - 1).max() < 0.05
    # a field within the band's width is taken out as n4 takes it out
    clean, tissue = _tissues()
    levels = np.where(tissue, np.round(clean / 100) * 100, 0)
    ramp = np.linspace(-1, 1, clean.shape[1])[None, :, None]
    biased = clean * np.exp(0.15 * ramp).astype(np.float32)
    assert _spread(biased, tissue, levels) > 0.05  # corrected by n4: 0.011
    assert _spread(correct_bias(biased, (1.5, 1.5, 2.0), "n4-peak"), tissue, levels) < 0.03
    # where a band would mean nothing, the whole foreground (n4's fit): too few voxels for a histogram, intensities
    # centred on zero, a band of almost nothing
    tiny = np.zeros((4, 4, 4), np.float32)
    tiny[1:3, 1:3, 1:3] = 5
    np.testing.assert_array_equal(peak_mask(tiny), tiny > 0)
    centred = rng.standard_normal((24, 24, 24)).astype(np.float32)
    everywhere = np.ones(centred.shape, bool)
    np.testing.assert_array_equal(peak_mask(centred, everywhere), everywhere)
    spread_out = np.linspace(1, 1000, 24**3, dtype=np.float32).reshape(24, 24, 24)
    assert peak_mask(spread_out, everywhere).mean() > 0.05
    np.testing.assert_array_equal(peak_mask(spread_out, everywhere, width=0.001), everywhere)


@pytest.mark.parametrize("method", ["none", "n4", "n4-peak"])
def test_the_bundle_description_says_which_field(tiny_model: Path, method: str) -> None:
    """The MONAI bundle's description of a model's preprocessing, sentence intact, names its bias correction."""
    from medsynth.bundle import bundle_metadata
    from medsynth.inference import read_model_file

    payload = read_model_file(tiny_model)
    payload["config"] = {**payload["config"], "bias_correction": method}
    text = bundle_metadata(payload, "t1-to-t2")["description"]
    expected = {"none": "resampling, normalised by its own",
                "n4": "resampling, divided by its N4 bias field, normalised by its own",
                "n4-peak": "resampling, divided by its N4 bias field (the field fitted on the histogram's main peak), "
                           "normalised by its own"}[method]
    assert expected in text, text
    assert describe_bias_correction(method, " of N4-corrected volumes") == {
        "none": "", "n4": " of N4-corrected volumes",
        "n4-peak": " of N4-corrected volumes (the field fitted on the histogram's main peak)"}[method]


def test_ras_spacing_follows_the_reorientation() -> None:
    from medsynth.inference import to_ras

    affine = np.array([[0, 0, -3.0, 0], [2.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])
    ras, ornt = to_ras(np.zeros((4, 5, 6), np.float32), affine)
    np.testing.assert_allclose(ras_spacing(affine), [2.0, 1.0, 3.0])
    np.testing.assert_allclose(ras_spacing(affine, ornt), [3.0, 2.0, 1.0])
    assert ras.shape == (6, 4, 5)


@pytest.mark.parametrize("method", ["n4", "n4-peak"])
def test_a_model_trained_with_n4_corrects_its_input_at_conversion(tiny_model: Path, method: str) -> None:
    """Conversion with a model that records ``bias_correction: n4`` (or ``n4-peak``) gives the voxels its networks
    give on the input corrected beforehand; the same networks without it give others."""
    from medsynth.inference import Translator

    clean, inside = _tissues((40, 44, 24))
    ramp = np.linspace(-1, 1, clean.shape[0])[:, None, None]
    biased = clean * np.exp(0.35 * ramp).astype(np.float32)
    affine = np.diag([1.2, 1.2, 2.0, 1.0])
    plain = Translator.from_file(tiny_model, device="cpu")
    n4, removed = (Translator.from_file(tiny_model, device="cpu", bias_field=b) for b in ("restore", "remove"))
    for t in (n4, removed):
        t.config = dataclasses.replace(t.config, bias_correction=method)
    assert n4.info()["bias_correction"] == method and plain.info()["bias_correction"] == "none"
    assert (n4.info()["bias_field"], removed.info()["bias_field"]) == ("restore", "remove")
    out = removed.translate_array(biased, affine)
    expected = plain.translate_array(correct_bias(biased, (1.2, 1.2, 2.0), method), affine)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    assert np.abs(out - plain.translate_array(biased, affine))[inside].mean() > 1.0
    # restore: the same translation times the input's field (scaled to median 1 over the foreground)
    field = estimate_field(biased, (1.2, 1.2, 2.0), method)
    restored = n4.translate_array(biased, affine)
    scaled = field / np.median(field[inside])
    np.testing.assert_allclose(restored[inside], out[inside] * scaled[inside], rtol=2e-3, atol=1e-2)
    assert np.abs(restored - out)[inside].mean() > 1.0
    with pytest.raises(InputError, match="unknown bias-field handling"):
        Translator.from_file(tiny_model, device="cpu", bias_field="keep")
    # for one call (a server request, a worker job): the other choice than the translator's own
    np.testing.assert_allclose(n4.translate_array(biased, affine, bias_field="remove"), out, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(removed.translate_array(biased, affine, bias_field="restore"), restored, rtol=1e-4,
                               atol=1e-2)
    with pytest.raises(InputError, match="unknown bias-field handling"):
        n4.translate_array(biased, affine, bias_field="keep")


def test_training_with_n4_corrects_the_volumes_records_it_and_init_inherits_it(tmp_path: Path, make_volume) -> None:
    from medsynth.cli import convert_main, train_main
    from medsynth.training import DomainData

    t1 = [make_volume(tmp_path / "t1", f"case{i}.nii.gz", seed=i) for i in range(2)]
    t2 = [make_volume(tmp_path / "t2", f"case{i}.nii.gz", seed=i, contrast="t2") for i in range(2)]
    # the cached training volume is the corrected one
    plain, corrected = DomainData(t1[:1], progress=False), DomainData(t1[:1], progress=False, bias_correction="n4")
    raw = np.asarray(nib.load(t1[0]).dataobj, np.float32)
    assert not torch.equal(plain.volumes[0], corrected.volumes[0])
    field = bias_field(raw, (1.0, 1.0, 1.0))
    assert not np.allclose(field, 1.0)

    common = ["--t1", *map(str, t1), "--t2", *map(str, t2), "--paired", "--steps", "2", "--size", "16",
              "--generator", "resnet6", "--ngf", "4", "--ndf", "4", "--quiet", "--device", "cpu", "--workers", "0"]
    assert train_main([*common, "--out", str(tmp_path / "run"), "--bias-correction", "n4"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bias_correction"] == "n4"
    out = tmp_path / "out.nii.gz"
    assert convert_main([str(t1[0]), str(out), "--model", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert nib.load(out).shape == raw.shape

    # --init takes the model's preparation; a different one given is refused in one line, nothing written
    assert train_main([*common, "--out", str(tmp_path / "ft"), "--init", str(tmp_path / "run" / "model.pt")]) == 0
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["bias_correction"] == "n4"
    assert train_main([*common, "--out", str(tmp_path / "ft2"), "--init", str(tmp_path / "run" / "model.pt"),
                       "--bias-correction", "none"]) == 2
    assert not (tmp_path / "ft2").exists()
