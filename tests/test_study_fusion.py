"""``scripts/study_fusion.py``: scoring a fold model's conversions per fusion, and reading the committed rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import load_script, phantom


@pytest.fixture(scope="module")
def sf():
    return load_script("study_fusion")


def test_the_rule_reads_both_questions_on_every_seed(sf) -> None:
    def _seed(axial: float, mean: float, detail: float, core_detail: float | None = None) -> dict:
        """Per-conversion means, every figure of a conversion one value (the detail core may differ)."""
        out = {name: {"/".join(f): v for f in sf.FIGURES}
               for name, v in (("axial", axial), ("all-mean", mean), ("all-median", mean), ("all-detail", detail))}
        if core_detail is not None:
            out["all-detail"]["t1-to-t2/core/psnr"] = core_detail
        return out

    above = _seed(axial=15.0, mean=14.0, detail=15.5)
    assert sf.read_rule({"0": above, "1": above}) == {"q1": {"0": True, "1": True}, "q2": {"0": True, "1": True},
                                                       "third_target_met": True, "default_fusion": "detail"}
    # the core below axial but above the mean: Q1 fails, Q2 holds, detail becomes the default
    core = _seed(axial=15.0, mean=14.0, detail=15.5, core_detail=14.5)
    rule = sf.read_rule({"0": core, "1": above})
    assert rule["q1"] == {"0": False, "1": True} and rule["q2"] == {"0": True, "1": True}
    assert not rule["third_target_met"] and rule["default_fusion"] == "detail"
    # below the mean in a lesion on one seed: mean stays the default
    worse = _seed(axial=15.0, mean=14.0, detail=15.5, core_detail=13.5)
    assert sf.read_rule({"0": worse, "1": above})["default_fusion"] == "mean"
    # below axial over the whole brain on one seed
    assert sf.read_rule({"0": _seed(axial=15.0, mean=14.0, detail=14.9), "1": above})["default_fusion"] == "mean"
    # one figure alone decides: an SSIM below axial fails Q1 and Q2; equal to axial is not below it
    ssim = _seed(axial=15.0, mean=14.0, detail=15.5)
    ssim["all-detail"]["t2-to-t1/brain/ssim"] = 14.99
    assert sf.read_rule({"0": ssim, "1": above})["default_fusion"] == "mean"
    equal = _seed(axial=15.0, mean=14.0, detail=15.5)
    equal["all-detail"]["t1-to-t2/brain/ssim"] = 15.0
    assert sf.read_rule({"0": equal, "1": above})["third_target_met"]
    with pytest.raises(ValueError, match="two seeds"):
        sf.read_rule({"0": above})


def test_a_fold_is_scored_per_conversion_and_reported(sf, tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    """A real (untrained) fold model on a synthetic held-out patient with a lesion mask: every conversion scored
    in both directions and cached, the report and the figure written."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    case = tmp_path / "patient"
    case.mkdir()
    for contrast in ("t1", "t2"):
        nib.save(nib.Nifti1Image(phantom((20, 24, 28), 0, contrast), affine), str(case / f"{contrast}.nii.gz"))
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[12:17, 7:13, 10:18] = 1
    labels[13:15, 8:11, 12:15] = 2
    lesions = tmp_path / "lesions"
    lesions.mkdir()
    nib.save(nib.Nifti1Image(labels, affine), str(lesions / "patient.nii.gz"))
    # the lesion masks are found where study_cpu looks for them (the study scores as the lesion study does)
    monkeypatch.setattr(sys.modules[sf.held_out_case.__module__], "LESIONS", lesions)
    cache = tmp_path / "fusion_scores.json"
    scores = sf.fold_scores(tiny_model, case, cache)
    assert cache.exists() and sf.fold_scores(tiny_model, case, cache) == scores
    names = [n for n, _, _ in sf.conversions()]
    assert names == ["axial", "all-mean", "all-median", "all-detail"]
    for name in names:
        for direction in ("t1-to-t2", "t2-to-t1"):
            assert set(scores[name][direction]) == {"brain", "oedema", "core", "lesion"}
            assert np.isfinite(scores[name][direction]["core"]["psnr"])
    # the fusions give different images, so different scores
    assert scores["all-detail"]["t1-to-t2"]["brain"] != scores["all-mean"]["t1-to-t2"]["brain"]
    means = {s: {n: sf.means({"patient": scores}, n) for n in names} for s in ("0", "1")}
    md = sf.report({"0": {"patient": scores}, "1": {"patient": scores}}, sf.read_rule(means), "intro")
    assert any(line.startswith("| 0 | all-detail |") for line in md)
    assert any("default fusion of `--axis all`" in line for line in md)
    assert "Not read: it needs every fold of both seeds." in sf.report({"0": {"patient": scores}}, None, "intro")
    # a cache made with other fusions is scored again, not reused
    stale = {**scores, "made_with": {"fusions": ["mean", "median"], "detail_sigma": 2.0}, "seconds": {"x": -1}}
    cache.write_text(json.dumps(stale))
    assert sf.fold_scores(tiny_model, case, cache)["made_with"] == scores["made_with"]
    png = sf.write_figure(tiny_model, case, tmp_path / "fusion.png")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > im.size[1] > 100
