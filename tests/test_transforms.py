"""Intensity normalisation, foreground, and the training slice chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.transforms import (IntensityStats, RandSliced, denormalise, intensity_stats, normalise,
                                 prepare_transform, train_slice_transform)


def test_stats_ignore_background_and_negative_ringing() -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((40, 40, 20), np.float32)
    x[10:30, 10:30, 5:15] = rng.uniform(200, 1000, (20, 20, 10))
    x[0, 0, :5] = -70  # ringing below the zero background, as in real skull-stripped data
    s = intensity_stats(x)
    assert s.background == 0.0 and 0 <= s.threshold < 200
    assert s.lo == pytest.approx(np.percentile(x[10:30, 10:30, 5:15], 0.5), rel=1e-3)
    # with a constant zero fill, everything above it is anatomy: dark CSF (a few units above zero, well below
    # 2 % of the range) stays foreground, the ringing below the fill does not
    x[12:14, 12:14, 6:8] = 5.0
    s = intensity_stats(x)
    assert 5.0 > s.threshold and -70 < s.threshold
    ct = np.full((30, 30, 10), -1000.0, np.float32) + rng.normal(0, 5, (30, 30, 10)).astype(np.float32)
    ct[5:25, 5:25] = rng.uniform(-100, 1500, (20, 20, 10))
    s = intensity_stats(ct)
    assert -1010 < s.background < -990 and s.threshold < -900


def test_normalise_and_denormalise_round_trip() -> None:
    x = torch.tensor([0.0, 100.0, 300.0, 500.0, 2000.0])
    stats = IntensityStats(lo=100.0, hi=500.0, background=0.0, threshold=50.0)
    y = normalise(x, stats)
    # the background is -1; the darkest foreground stays just above it, distinguishable from background
    assert y.tolist() == pytest.approx([-1.0, -1.0 + 2e-3, 0.0, 1.0, 1.0])
    back = denormalise(y, stats, foreground=x > stats.threshold)
    assert back.tolist() == pytest.approx([0.0, 100.4, 300.0, 500.0, 500.0])


def test_prepare_transform_reorients_to_ras(tmp_path: Path, make_volume) -> None:
    import nibabel as nib

    lps = np.diag([-2.0, -1.0, 1.5, 1.0])
    path = make_volume(tmp_path, "lps.nii.gz", shape=(10, 12, 8), affine=lps)
    out = prepare_transform("image")({"image": str(path)})
    img = out["image"]
    assert img.shape == (1, 10, 12, 8) and img.min() == -1 and img.max() == 1
    assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
    raw = nib.load(path).get_fdata()
    # the first RAS voxel is the last stored one along the two flipped axes
    flipped = normalise(torch.from_numpy(raw[::-1, ::-1, :].copy()).float(), intensity_stats(raw))
    assert torch.allclose(img[0].as_tensor(), flipped)
    assert set(out["image_stats"]) == {"lo", "hi", "background", "threshold"}


def test_rand_slice_skips_background_and_pads_without_resizing() -> None:
    vol = -torch.ones(1, 20, 20, 30)
    vol[:, 5:15, 5:15, 10:20] = 0.5
    picker = RandSliced("image", axis="axial", min_foreground=0.5)
    picker.set_random_state(0)
    for _ in range(20):
        sl = picker({"image": vol})["image"]
        assert sl.shape == (1, 20, 20) and (sl > -1).any()
    chain = train_slice_transform("image", size=32, augment=False, flip=False)
    chain.set_random_state(0)
    out = chain({"image": vol})["image"]
    assert out.shape == (1, 32, 32)
    # padding adds background; the 10x10 foreground square is still 10x10 (no resizing)
    assert int((out > -1).sum()) == 100
    chain = train_slice_transform("image", size=12, augment=True)
    chain.set_random_state(3)
    assert chain({"image": vol})["image"].shape == (1, 12, 12)
