"""``scripts/study_allpairs.py``: the fourteenth pass's rule (a third training patient, scored on the template pair)
read off the models' scores, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script



@pytest.fixture(scope="module")
def ap():
    module = load_script("study_allpairs")
    return module


def _scores(psnr: float, ssim: float, back: float | None = None) -> dict:
    """Both directions' scores: T1 -> T2 at ``psnr``, T2 -> T1 at ``back`` (default the same)."""
    back = psnr if back is None else back
    return {"t1-to-t2": {"psnr": psnr, "ssim": ssim, "mae": 0.1},
            "t2-to-t1": {"psnr": back, "ssim": ssim, "mae": 0.1}}


def _seed(ap, by_k: dict[int, list[dict]]) -> dict:
    """One seed's entry as ``study`` gathers it, from each size's models' scores."""
    out = {}
    for k, models in by_k.items():
        runs = [{"patients": [f"p{i}" for i in range(k)], "minutes": 4.0, "model": m, "fair": _scores(13.0, 0.6)}
                for m in models]
        out[str(k)] = {"runs": runs, "mean": ap._mean([r["model"] for r in runs]),
                       "fair": ap._mean([r["fair"] for r in runs])}
    return out


def test_the_rule_holds_only_when_every_part_does(ap) -> None:
    two = [_scores(15.0, 0.60), _scores(15.4, 0.60), _scores(15.2, 0.60)]
    good = {"0": _seed(ap, {3: [_scores(16.0, 0.60)], 2: two, 1: [_scores(14.0, 0.55)] * 3}),
            "1": _seed(ap, {3: [_scores(15.9, 0.60)], 2: [_scores(15.1, 0.60)] * 3})}
    rule = ap.verdict(good, [0])
    assert rule == {"1_two_beat_one": True, "2_three_beat_two": True, "3_ssim_kept": True, "holds": True}

    # the three-patient model below the two-patient mean in one direction on one seed
    worse = json.loads(json.dumps(good))
    worse["1"] = _seed(ap, {3: [_scores(15.9, 0.60, back=15.0)], 2: [_scores(15.1, 0.60)] * 3})
    rule = ap.verdict(worse, [0])
    assert rule["2_three_beat_two"] is False and rule["holds"] is False

    # PSNR up, SSIM down by 0.01 on the mean over the seeds
    blurry = {"0": _seed(ap, {3: [_scores(16.0, 0.59)], 2: [_scores(15.0, 0.60)] * 3, 1: [_scores(14.0, 0.55)] * 3}),
              "1": _seed(ap, {3: [_scores(16.0, 0.59)], 2: [_scores(15.0, 0.60)] * 3})}
    rule = ap.verdict(blurry, [0])
    assert rule["2_three_beat_two"] is True and rule["3_ssim_kept"] is False and rule["holds"] is False

    # the test head does not reproduce the learning curve (two patients no better than one): not trusted
    flat = json.loads(json.dumps(good))
    flat["0"] = _seed(ap, {3: [_scores(16.0, 0.60)], 2: [_scores(15.0, 0.60)] * 3, 1: [_scores(15.5, 0.55)] * 3})
    assert ap.verdict(flat, [0])["holds"] is False

    # no one-patient models: the rule cannot be read
    rule = ap.verdict({"1": good["1"]}, [0])
    assert rule["1_two_beat_one"] is None and rule["holds"] is False


def test_report_writes_the_table_and_the_verdict(ap, tmp_path: Path) -> None:
    seeds = {"0": _seed(ap, {3: [_scores(16.0, 0.60)], 2: [_scores(15.0, 0.60)] * 3, 1: [_scores(14.0, 0.55)] * 3})}
    result = {"recipe": ap.RECIPE, "spec": {}, "test": ap.TEST, "seeds": seeds, "oracle": _scores(14.5, 0.62),
              "rule": ap.verdict(seeds, [0])}
    ap.report(result, tmp_path, "allpairs", None)
    md = (tmp_path / "allpairs.md").read_text()
    assert "| 0 | 3 | 1 | 4.0 | 16.00 / 0.600 | 16.00 / 0.600 | 13.00 / 0.600 | 13.00 / 0.600 |" in md
    assert "| 0 | 2 | 3 | 4.0 | 15.00 / 0.600 |" in md
    assert "| - | oracle baseline | - | - | 14.50 / 0.620 |" in md
    assert "Holds: **True**" in md
    assert json.loads((tmp_path / "allpairs.json").read_text())["rule"]["holds"] is True
