"""``scripts/check_oedema_level.py``: each patient's oedema level, real and rendered, by the fold models that saw it
and the one that did not."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from conftest import load_script, phantom, write_residual_model


@pytest.fixture(scope="module")
def co() -> ModuleType:
    return load_script("check_oedema_level")


def _patients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, co: ModuleType) -> tuple[Path, list[Path]]:
    """Two synthetic patients with an oedema (and one with a core) whose real T2 is bright there."""
    data, lesions = tmp_path / "data", tmp_path / "lesions"
    lesions.mkdir(parents=True)
    affine = np.eye(4)
    for i, name in enumerate(("p1", "p2")):
        labels = np.zeros((20, 24, 28), np.uint8)
        labels[12:17, 7:13, 10:18] = 1
        if i == 0:
            labels[13:15, 8:11, 12:15] = 2
        t1 = phantom((20, 24, 28), i, "t1")
        t2 = phantom((20, 24, 28), i, "t2")
        t2[labels == 1] = np.where(t2[labels == 1] > 0, t2.max(), 0)
        (data / name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(t1, affine), str(data / name / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(t2, affine), str(data / name / "t2.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(lesions / f"{name}.nii.gz"))
    monkeypatch.setattr(sys.modules[co.held_out_case.__module__], "LESIONS", lesions)
    return data, sorted(data.iterdir())


def test_every_fold_model_reads_every_patient_seen_and_unseen(co: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from medsynth.evaluation import normalise_in_mask

    data, patients = _patients(tmp_path, monkeypatch, co)
    run = tmp_path / "run"
    # fold p1's model is its base alone (the correction's gate closed); fold p2's corrects it
    for p, gate in zip(patients, (0.0, 0.5)):
        (run / p.name).mkdir(parents=True)
        write_residual_model(run / p.name / "model.pt", gate=gate)
    rows = co.levels(run, patients)
    # two folds x (p1: oedema, core, white matter; p2: oedema, white matter)
    assert len(rows) == 2 * 5
    assert sum(not r["seen"] for r in rows) == 5 and all(r["seen"] == (r["patient"] != r["fold"]) for r in rows)
    assert {r["region"] for r in rows if r["patient"] == "p2"} == {"oedema", "white matter"}
    # the real level is the normalised T2's mean in the region, whichever model reads it
    t1 = nib.load(str(data / "p1" / "t1.nii.gz")).get_fdata()
    t2 = nib.load(str(data / "p1" / "t2.nii.gz")).get_fdata()
    labels = nib.load(str(tmp_path / "lesions" / "p1.nii.gz")).get_fdata()
    brain = (t1 > 0) & (t2 > 0)
    expected = normalise_in_mask(t2, brain)[(labels == 1) & brain].mean()
    oedema = [r for r in rows if r["patient"] == "p1" and r["region"] == "oedema"]
    assert [r["real"] for r in oedema] == pytest.approx([expected] * 2, abs=1e-5)
    # the synthetic oedema is at the T2's bright end, brighter than white matter
    white = [r for r in rows if r["patient"] == "p1" and r["region"] == "white matter"]
    assert oedema[0]["real"] > 0.9 > white[0]["real"]
    # the base is the fair baseline: the model itself with its correction closed, and the same for both folds
    # (the two models carry the same histograms)
    # (bf16 autocast on CPUs that have it: the closed-gate model's levels within a few thousandths of the base's)
    for r in rows:
        if r["fold"] == "p1":
            assert r["model"] == pytest.approx(r["base"], abs=3e-3), r
    assert [r["base"] for r in rows if r["fold"] == "p1"] == pytest.approx([r["base"] for r in rows if r["fold"] == "p2"])
    assert any(abs(r["model"] - r["base"]) > 1e-3 for r in rows if r["fold"] == "p2")
    # models that carry no training files: nothing taught to rebuild
    assert all(r["taught"] is None for r in rows)


def test_taught_is_the_target_the_fold_compared_with(co: ModuleType, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """For a seen patient, ``taught`` is its T2 matched onto the pooled T2 quantiles the fold model carries (those
    its training matched onto, whatever its files pool to now), or with ``--target-norm percentile`` its own
    normalised T2 (the real level); an unseen patient has none."""
    import torch

    from medsynth.evaluation import normalise_in_mask
    from medsynth.intensity import intensity_stats, normalise
    from medsynth.networks import histogram_match

    data, patients = _patients(tmp_path, monkeypatch, co)
    files = [str(p / "t2.nii.gz") for p in patients]
    rows = {}
    for norm in ("histogram", "percentile"):
        run = tmp_path / norm
        for p in patients:
            (run / p.name).mkdir(parents=True)
            # each fold model names both patients' T2s as its training files, which only a ceiling run does:
            # p2 is seen by fold p1 and p1 by fold p2
            write_residual_model(run / p.name / "model.pt", b=files, target_norm=norm)
        rows[norm] = co.levels(run, patients)
    for found in rows.values():
        for r in found:
            assert (r["taught"] is None) == (not r["seen"]), r
    percentile = [r for r in rows["percentile"] if r["seen"]]
    # (within a thousandth or two: training's normalisation clips at the foreground's 0.5/99.5 percentiles, the
    # levels are the brain's)
    assert [r["taught"] for r in percentile] == pytest.approx([r["real"] for r in percentile], abs=2e-3)
    # the model's own pooled quantiles (write_residual_model's cubic ramp, not what these two files pool to)
    pooled = torch.tensor(torch.load(tmp_path / "histogram" / "p1" / "model.pt", weights_only=True)
                          ["stats"]["t2"]["quantiles"])
    t2 = nib.load(str(data / "p1" / "t2.nii.gz")).get_fdata().astype(np.float32)
    t1 = nib.load(str(data / "p1" / "t1.nii.gz")).get_fdata()
    labels = nib.load(str(tmp_path / "lesions" / "p1.nii.gz")).get_fdata()
    brain = (t1 > 0) & (t2 > 0)
    matched = histogram_match(normalise(torch.from_numpy(t2), intensity_stats(t2))[None], pooled)[0].numpy()
    expected = normalise_in_mask(matched, brain)[(labels == 2) & brain].mean()
    core = [r for r in rows["histogram"] if r["patient"] == "p1" and r["region"] == "core" and r["seen"]]
    assert [r["taught"] for r in core] == pytest.approx([expected], abs=1e-5)
    # matched onto that pool, tissue is taught at other levels than it has (the synthetic oedema, each T2's
    # maximum, stays at the top whatever the match; the rest moves)
    assert max(abs(r["taught"] - r["real"]) for r in rows["histogram"] if r["seen"]) > 0.01


def test_bad_inputs_stop_with_one_line(co: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for data in (empty, tmp_path / "absent"):
        assert co.main(["--run", str(tmp_path), "--data", str(data)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {data}: no patients (folders with t1.nii.gz and t2.nii.gz)"
    data, patients = _patients(tmp_path, monkeypatch, co)
    run = tmp_path / "run"
    (run / "p1").mkdir(parents=True)
    write_residual_model(run / "p1" / "model.pt")
    # found before any conversion, every missing fold named
    assert co.main(["--run", str(run), "--data", str(data)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {run}: no fold model (<patient>/model.pt) for p2"
