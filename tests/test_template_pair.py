"""``scripts/make_template_pair.py``: the skull-stripped 1 mm MNI template pair that trains the packaged model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_template_pair.py"


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("make_template_pair", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_brain_mask_keeps_the_brain_and_drops_skull_and_scalp(tp) -> None:
    """A head: brain (bright, with a dark ventricle inside), a dark skull ring, a bright scalp ring."""
    grids = np.meshgrid(*[np.linspace(-1, 1, 48)] * 3, indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grids))
    head = np.where(r < 0.6, 0.7, 0.0)
    head = np.where((r > 0.75) & (r < 0.9), 0.6, head)  # scalp
    ventricle = np.sqrt((grids[0] - 0.1) ** 2 + grids[1] ** 2 + grids[2] ** 2) < 0.15
    head = np.where(ventricle, 0.1, head)
    mask = tp.brain_mask(head.astype(np.float32))
    assert mask[ventricle].all(), "the dark ventricle inside belongs to the brain"
    assert not mask[(r > 0.8) & (r < 0.85)].any(), "the scalp is not brain"
    assert mask[r < 0.6].all()
    # dilated one voxel more than eroded: the surface CSF around the brain, as the patients' masks hold it
    voxel = 2 / 47
    assert not mask[r > 0.6 + 1.5 * voxel].any()


def test_upsample_keeps_voxel_centres_and_world_positions(tp) -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    out, new = tp.upsample(volume, affine)
    assert out.shape == (9, 11, 13)
    np.testing.assert_allclose(out[::2, ::2, ::2], volume, atol=1e-6)
    np.testing.assert_allclose(out[1, 0, 0], volume[:2, 0, 0].mean(), atol=1e-6)
    for index in ((0, 0, 0), (3, 4, 5)):
        np.testing.assert_allclose(new @ np.array([2 * i for i in index] + [1]), affine @ np.array([*index, 1]))


def test_shared_templates_make_the_committed_mask_and_a_pair_training_accepts(tp, shared_data: Path,
                                                                              tmp_path: Path) -> None:
    import nibabel as nib

    from medsynth.training import DomainData, pair_volumes

    templates = shared_data / "templates_2mm"
    mask_path = tmp_path / "mask.nii.gz"
    tp.make_mask(templates, mask_path)
    made = np.asarray(nib.load(mask_path).dataobj)
    kept = np.asarray(nib.load(tp.MASK).dataobj)
    np.testing.assert_array_equal(made, kept)  # the study's mask is what the script makes
    assert 1600 < made.sum() * 8 / 1000 < 2100  # mL: a brain with its CSF, no scalp
    assert mask_path.with_suffix("").with_suffix(".png").stat().st_size > 10_000

    out = tp.make_pair(tmp_path / "mni152", templates, mask_path)
    t1, t2 = nib.load(out / "t1.nii.gz"), nib.load(out / "t2.nii.gz")
    assert t1.shape == t2.shape == (181, 217, 181) and np.allclose(t1.header.get_zooms(), 1.0)
    np.testing.assert_allclose(t1.affine, t2.affine)
    source = nib.load(templates / "avg152T1.nii")
    np.testing.assert_allclose(t1.affine @ [20, 30, 40, 1], source.affine @ [10, 15, 20, 1])
    a1, a2 = np.asarray(t1.dataobj), np.asarray(t2.dataobj)
    assert ((a1 > 0) == (a2 > 0)).mean() > 0.999  # one brain for both
    assert a1[0].max() == 0 and a1[:, :, -1].max() == 0  # scalp and skull at the edges are gone
    # what --paired training needs: the two on one grid, matched as a case
    a, b = DomainData([out / "t1.nii.gz"], progress=False), DomainData([out / "t2.nii.gz"], progress=False)
    assert pair_volumes(a, b) == [(0, 0)]
