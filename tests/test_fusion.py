"""Fusing the three passes of ``--axis all``: the smoothing, what ``detail`` keeps from each pass, and a real
translator fusing real passes of an untrained network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.fusion import DETAIL_SIGMA, FUSIONS, fuse_passes, smooth_along
from medsynth.inference import Translator


@pytest.mark.parametrize("length", [1, 3, 40])
@pytest.mark.parametrize("sigma", [2.0, 1.1, 3.3])
def test_smooth_along_is_scipys_gaussian_with_nearest_edges(length: int, sigma: float) -> None:
    from scipy.ndimage import gaussian_filter1d

    x = torch.randn(1, 4, 5, length, generator=torch.Generator().manual_seed(length))
    for dim in (1, 3, -1):
        expected = gaussian_filter1d(x.numpy(), sigma, axis=dim, mode="nearest")
        np.testing.assert_allclose(smooth_along(x, dim, sigma).numpy(), expected, atol=1e-5)
    assert smooth_along(x, 3, 0.0) is x
    half = smooth_along(x.bfloat16(), 3, sigma)
    assert half.dtype == torch.bfloat16
    np.testing.assert_allclose(half.float().numpy(), gaussian_filter1d(x.bfloat16().float().numpy(), sigma, axis=3,
                                                                       mode="nearest"), atol=0.02)
    with pytest.raises(TypeError, match="floating-point"):
        smooth_along(torch.ones(3, 4, dtype=torch.int64), 1, sigma)


def _passes(shape=(1, 12, 10, 48), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {a: torch.rand(shape, generator=g) for a in ("axial", "coronal", "sagittal")}


def test_mean_and_median_are_voxel_by_voxel() -> None:
    p = _passes()
    stacked = torch.stack(list(p.values()))
    assert torch.equal(fuse_passes(p, "mean"), stacked.mean(0))
    assert torch.equal(fuse_passes(p, "median"), stacked.median(0).values)
    one = {"axial": p["axial"]}
    assert all(fuse_passes(one, f) is p["axial"] for f in FUSIONS)


def test_detail_keeps_the_axial_pass_where_the_others_differ_only_slowly_across_slices() -> None:
    """A lesion rendered darker by the coronal and sagittal passes, by an amount that changes smoothly (or not at
    all) across axial slices, leaves the axial pass's intensities as they are."""
    p = _passes()
    z = torch.arange(48, dtype=torch.float32)
    darker = torch.zeros(1, 12, 10, 1)
    darker[:, 3:8, 2:7] = 0.3  # in-plane, sharp: the lesion's outline
    slow = darker * (1 + 0.2 * torch.sin(z / 15))  # across slices, smooth
    p["coronal"] = p["axial"] - slow
    p["sagittal"] = p["axial"] - darker
    fused = fuse_passes(p, "detail")
    inner = (slice(None), slice(None), slice(None), slice(10, 38))  # away from the ends of the stack
    assert (fused - p["axial"])[inner].abs().max() < 2e-3
    # the mean takes the darkening in with a third and a half of its weight
    assert (fuse_passes(p, "mean") - p["axial"])[inner].abs().max() > 0.15


def test_detail_removes_stripes_between_axial_slices() -> None:
    """Slice-to-slice jitter of the axial pass (what a slice-wise network leaves) is mostly replaced by the other
    passes' detail across slices, which is consistent."""
    g = torch.Generator().manual_seed(1)
    z = torch.arange(64, dtype=torch.float32)
    truth = torch.sin(z / 5).expand(1, 8, 8, 64) + torch.rand(1, 8, 8, 1, generator=g)
    jitter = 0.2 * torch.randn(1, 1, 1, 64, generator=g)
    p = {"axial": truth + jitter, "coronal": truth.clone(), "sagittal": truth.clone()}

    def stripes(method: str) -> float:
        """Jumps from one slice to the next left in the fused error, against the axial pass's own."""
        error = (fuse_passes(p, method) - truth)[..., 8:56]
        return float(error.diff(dim=-1).std() / jitter[..., 8:56].diff(dim=-1).std())

    assert stripes("detail") < 0.2, stripes("detail")
    assert stripes("mean") > 0.3, stripes("mean")  # the mean keeps a third of them


def test_refused_fusions() -> None:
    p = _passes()
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        fuse_passes(p, "max")
    with pytest.raises(ValueError, match="needs the three passes"):
        fuse_passes({"axial": p["axial"], "coronal": p["coronal"]}, "detail")


#: S-I along the array's first axis, R-L along its second, A-P along its third: fusing along the array's last axis
#: would smooth the wrong direction
S_FIRST = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("affine", [np.eye(4), S_FIRST], ids=["ras", "s-first"])
def test_a_translator_fuses_its_own_passes(tmp_path: Path, make_volume, tiny_model: Path, affine) -> None:
    """``--axis all --fuse detail`` of a real (untrained) network: background where the input has none, and
    inside the head the detail fusion of the three single-axis outputs, smoothed along inferior-superior whatever
    the array order. Fused here after the intensity map, which is affine where nothing is clamped, and only where
    the smoothing sees no background (the translator fuses before the background is put in)."""
    import nibabel as nib

    shape = (16, 20, 40) if affine is not S_FIRST else (40, 16, 20)
    src = make_volume(tmp_path, "in.nii.gz", shape=shape, affine=affine)
    ornt = nib.orientations.io_orientation(affine)

    def ras(a: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(a, ornt)

    translator = Translator.from_file(tiny_model, device="cpu", precision="fp32")
    fused = ras(translator.translate(src, axis="all", fuse="detail").array)
    singles = {a: torch.from_numpy(ras(translator.translate(src, axis=a).array).copy())[None] for a in
               ("axial", "coronal", "sagittal")}
    after = fuse_passes(singles, "detail")[0].numpy()
    axial = singles["axial"][0].numpy()
    mean = ras(translator.translate(src, axis="all", fuse="mean").array)
    foreground = axial != axial.min()
    assert np.all(fused[~foreground] == axial[~foreground])
    radius = int(4 * DETAIL_SIGMA + 0.5)
    clear = np.ones_like(foreground)
    for shift in range(-radius, radius + 1):
        clear &= np.roll(foreground, shift, axis=2)
    clear[..., :radius] = clear[..., -radius:] = False
    assert clear.sum() > 500, clear.sum()
    span = np.ptp(fused[foreground])
    close = np.abs(fused - after)[clear] < 1e-3 * span
    # the passes meet only where the output is not clamped; mostly it is not
    assert close.mean() > 0.9, close.mean()
    assert not np.allclose(fused, mean) and not np.allclose(fused, axial)
