"""``scripts/study_error_map.py``: the split of a translation's squared error by region and by spatial scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script



@pytest.fixture(scope="module")
def em():
    module = load_script("study_error_map")
    return module


def _ball(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    grids = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    mask = r < 0.8
    rng = np.random.default_rng(0)
    ref = np.where(mask, 0.2 + 0.6 * (r < 0.4) + 0.05 * rng.standard_normal(r.shape), 0.0)
    return ref.astype(np.float32), mask


def test_error_at_the_rim_only_is_the_rims(em) -> None:
    ref, mask = _ball()
    distance = em.edge_distance(mask)
    pred = np.where(mask & (distance <= 3), ref + 0.3, ref)
    m = em.error_map(pred, ref, mask, rim=3)
    assert m["regions"]["rim"]["error"] == pytest.approx(1.0)
    assert m["regions"]["rim"]["bias"] == pytest.approx(0.3, abs=1e-6)
    assert sum(r["voxels"] for r in m["regions"].values()) == pytest.approx(1.0)
    assert sum(r["error"] for r in m["regions"].values()) == pytest.approx(1.0)
    assert m["psnr_interior"] == float("inf") and np.isfinite(m["psnr"])
    # the interior bands split the interior by the reference's levels: the bright core is the top bands'
    assert m["regions"]["top 10 %"]["voxels"] > 0 and m["regions"]["dark third"]["voxels"] > 0


def test_a_regional_offset_is_low_frequency_and_noise_is_not(em) -> None:
    ref, mask = _ball()
    offset = em.error_map(np.where(mask, ref + 0.1, 0), ref, mask, sigma=4)
    assert offset["low_share"] > 0.95 and offset["psnr_without_low"] > offset["psnr"] + 15
    noise = np.where(mask, ref + 0.1 * np.random.default_rng(1).standard_normal(ref.shape), 0)
    fine = em.error_map(noise, ref, mask, sigma=4)
    assert fine["low_share"] < 0.05 and fine["psnr_without_low"] == pytest.approx(fine["psnr"], abs=0.3)
    # the bands and the rim see the offset evenly
    assert all(r["bias"] == pytest.approx(0.1, abs=1e-5) for r in offset["regions"].values())


def test_rim_profile_shows_partial_volume(em) -> None:
    from scipy import ndimage

    ref, mask = _ball(60)
    blurred = ndimage.gaussian_filter(np.where(mask, 0.5, 0.0), 1.5)  # resampling with a zero background
    profile = em.rim_profile(blurred, mask, em.edge_distance(mask))
    assert len(profile) == em.PROFILE_DEPTH + 1
    assert profile[0] < 0.4 < profile[-1] and profile == sorted(profile)
