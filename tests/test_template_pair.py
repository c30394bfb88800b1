"""``scripts/make_template_pair.py``: the skull-stripped 1 mm MNI template pair that trains the packaged model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script



@pytest.fixture(scope="module")
def tp():
    module = load_script("make_template_pair")
    return module


def test_brain_mask_keeps_the_brain_and_drops_skull_and_scalp(tp) -> None:
    """A head: brain (bright, a dark ventricle inside), a dark skull ring, a scalp ring thick enough to survive the
    erosion, and an eye joined to the brain by a thin bridge (the erosion must cut it)."""
    n = 160
    voxel = 2 / (n - 1)
    grids = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grids))
    head = np.where(r < 0.6, 0.7, 0.0)
    scalp = (r > 0.75) & (r < 0.85)  # 8 voxels thick: a component of its own after the erosion
    head = np.where(scalp, 0.6, head)
    ventricle = np.sqrt((grids[0] - 0.1) ** 2 + grids[1] ** 2 + grids[2] ** 2) < 0.12
    head = np.where(ventricle, 0.1, head)
    eye = np.sqrt((grids[0] - 0.675) ** 2 + grids[1] ** 2 + grids[2] ** 2) < 0.05
    bridge = (np.abs(grids[1]) < 1.1 * voxel) & (np.abs(grids[2]) < 1.1 * voxel) & (grids[0] > 0.55) & (grids[0] < 0.65)
    head = np.where(eye | bridge, 0.65, head)
    mask = tp.brain_mask(head.astype(np.float32))
    assert mask[ventricle].all(), "the dark ventricle inside belongs to the brain"
    assert not mask[scalp].any(), "the scalp is not brain"
    eye_core = np.sqrt((grids[0] - 0.675) ** 2 + grids[1] ** 2 + grids[2] ** 2) < 0.02
    assert not mask[eye_core].any(), "the eye, joined by a thin bridge, is not brain"
    assert mask[r < 0.6].all()
    # dilated one voxel more than eroded: the surface CSF around the brain, as the patients' masks hold it
    assert not mask[(r > 0.6 + 1.5 * voxel) & ~bridge].any() and not mask[r > 0.6 + 3 * voxel].any()


def test_upsample_keeps_voxel_centres_and_world_positions(tp) -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((5, 6, 7)).astype(np.float32)
    c, s_ = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[-2.0 * c, -2.0 * s_, 0, 90], [2.0 * s_, -2.0 * c, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    for affine in (np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]), oblique):
        out, new = tp.upsample(volume, affine)
        assert out.shape == (9, 11, 13)
        np.testing.assert_allclose(out[::2, ::2, ::2], volume, atol=1e-6)
        np.testing.assert_allclose(out[1, 0, 0], volume[:2, 0, 0].mean(), atol=1e-6)
        for index in ((0, 0, 0), (3, 4, 5), (4, 5, 6)):
            np.testing.assert_allclose(new @ np.array([2 * i for i in index] + [1]), affine @ np.array([*index, 1]))
        np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), 1.0)  # 1 mm voxels, any rotation


def test_thick_slices_average_slabs_along_s_i_whatever_the_voxel_order(tp) -> None:
    """A thin bright sheet across S-I spreads over its 5 mm slab and fades linearly to the next slab centres;
    in-plane detail and a constant are untouched; S-I is found from the affine (here voxel axis 0)."""
    volume = np.zeros((30, 8, 6), np.float32)  # axis 0 is S-I below
    volume[12] = 1.0  # slab 10..14 (centre 12), neighbours centred at 7 and 17
    volume[:, 3, 2] += 0.5  # an in-plane line along S-I's own direction: constant along it, so kept
    affine = np.array([[0, 0, -1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # voxel axis 0 -> S
    out = tp.thick_slices(volume, affine, 5.0)
    profile = out[:, 0, 0]
    np.testing.assert_allclose(profile[12], 0.2, atol=1e-6)  # the slab's mean
    np.testing.assert_allclose(profile[[7, 17]], 0.0, atol=1e-6)  # the next slabs' centres hold nothing of it
    np.testing.assert_allclose(profile[[10, 14]], 0.2 * 3 / 5, atol=1e-6)  # linear between centres
    np.testing.assert_allclose(out.sum(axis=0)[0, 0], volume.sum(axis=0)[0, 0], rtol=1e-5)  # nothing made or lost
    np.testing.assert_allclose(out[:, 3, 2] - profile, 0.5, atol=1e-6)  # detail across other axes kept
    assert out.shape == volume.shape and out.dtype == np.float32
    # the same volume with S-I on the last voxel axis gives the same result, transposed
    moved = tp.thick_slices(np.moveaxis(volume, 0, -1), np.diag([1.0, 1.0, 1.0, 1.0]), 5.0)
    np.testing.assert_allclose(np.moveaxis(moved, -1, 0), out, atol=1e-6)
    # the last slab may be thinner (30 = 6 x 5 here; 32 leaves a 2-voxel slab whose centre is 30.5)
    tail = np.zeros((1, 1, 32), np.float32)
    tail[0, 0, 30:] = 1.0
    np.testing.assert_allclose(tp.thick_slices(tail, np.eye(4), 5.0)[0, 0, 30:], [3 / 3.5, 1.0], atol=1e-6)
    for bad in (0.0, -3.0, float("nan"), 1.2):
        with pytest.raises(ValueError, match="slab thickness"):
            tp.thick_slices(volume, affine, bad)


def test_bad_input_is_one_line_and_status_2_and_a_user_folder_is_kept(tp, tmp_path: Path, capsys) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "avg152T1.nii").write_bytes(b"not a nifti")
    assert tp.main(["--templates", str(templates), "--out", str(tmp_path / "pair")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "avg152T1.nii" in err and "not a readable NIfTI" in err
    assert not (tmp_path / "pair").exists()
    # valid tiny templates: an --out folder holding a user's own files is refused, not replaced
    import nibabel as nib

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for name, value in (("avg152T1.nii", 0.7), ("avg152T2.nii", 0.4)):
        nib.save(nib.Nifti1Image(np.full((6, 6, 6), value, np.float32), affine), templates / name)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), affine), mask)
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a template pair folder"):
        tp.make_pair(kept, templates, mask)
    assert [f.name for f in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temporary folder left
    pair = tp.make_pair(tmp_path / "pair", templates, mask)
    assert sorted(f.name for f in pair.iterdir()) == ["inputs.json", "t1.nii.gz", "t2.nii.gz"]
    assert nib.load(pair / "t1.nii.gz").shape == (11, 11, 11)
    stamp = (pair / "inputs.json").read_text()
    # a bad slab thickness: one line, status 2, the pair left as it was
    assert tp.main(["--templates", str(templates), "--out", str(pair), "--slab-mm", "-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "slab thickness -2.0 mm" in err
    assert (pair / "inputs.json").read_text() == stamp
    # thick slices are another pair: the stamp says so and the pair is made again
    tp.make_pair(pair, templates, mask, slab_mm=4.0)
    assert json.loads((pair / "inputs.json").read_text())["slab_mm"] == 4.0


def test_shared_templates_make_the_committed_mask_and_a_pair_training_accepts(tp, shared_data: Path,
                                                                              tmp_path: Path) -> None:
    import nibabel as nib

    from medsynth.training import DomainData, pair_volumes

    templates = shared_data / "templates_2mm"
    if not (templates / "avg152T1.nii").is_file():
        pytest.skip("../shared/data has no templates_2mm")
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
    # each is its own template inside the mask (at the 2 mm voxels' centres) and zero outside it
    for array, name in ((a1, "avg152T1.nii"), (a2, "avg152T2.nii")):
        template = np.asarray(nib.load(templates / name).dataobj, np.float32)
        np.testing.assert_allclose(array[::2, ::2, ::2], np.where(made > 0, template, 0), atol=1e-5)
    assert abs((a1 > 0).sum() / 1000 - made.sum() * 8 / 1000) < 0.05 * made.sum() * 8 / 1000
    assert a1[0].max() == 0 and a1[:, :, -1].max() == 0  # scalp and skull at the edges are gone
    # made again from the same inputs: kept (the stamp matches); from another mask: made anew
    stamp = (out / "inputs.json").read_text()
    before = (out / "t1.nii.gz").stat().st_mtime_ns
    assert tp.make_pair(out, templates, mask_path) == out and (out / "t1.nii.gz").stat().st_mtime_ns == before
    other = tmp_path / "other_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(made), nib.load(mask_path).affine), other)
    tp.make_pair(out, templates, other)
    assert (out / "inputs.json").read_text() != stamp and np.asarray(nib.load(out / "t1.nii.gz").dataobj).max() == 0
    tp.make_pair(out, templates, mask_path)
    # what --paired training needs: the two on one grid, matched as a case
    a, b = DomainData([out / "t1.nii.gz"], progress=False), DomainData([out / "t2.nii.gz"], progress=False)
    assert pair_volumes(a, b) == [(0, 0)]
