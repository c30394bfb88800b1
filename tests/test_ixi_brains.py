"""``scripts/make_ixi_brains.py``: the IXI T1s brain-only by the MNI brain mask registered onto each head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import load_script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def ixi():
    module = load_script("make_ixi_brains")
    if not (module.TEMPLATES / "avg152T1.nii").is_file() or not module.MASK.is_file():
        pytest.skip("the shared MNI templates are not here")
    return module


def test_registration_finds_a_moved_head(ixi, tmp_path: Path) -> None:
    """The template itself, rotated 8 degrees and shifted about 11 mm on its own grid: the mask registered onto it
    must be the template's mask moved the same way (an idle registration would leave it where it was)."""
    from scipy import ndimage as ndi

    template = nib.load(ixi.TEMPLATES / "avg152T1.nii")
    mask = np.asarray(nib.load(ixi.MASK).dataobj) > 0
    volume = np.asarray(template.dataobj, np.float32)

    def move(x: np.ndarray, order: int) -> np.ndarray:
        return ndi.shift(ndi.rotate(x, 8, axes=(0, 1), reshape=False, order=order), (4.5, -3, 2), order=order)

    path = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(move(volume, 1), template.affine), path)
    moved_mask = move(mask.astype(np.float32), 1) > 0.5
    found = ixi.register_mask(path)

    def dice(x: np.ndarray, y: np.ndarray) -> float:
        return 2 * float((x & y).sum()) / float(x.sum() + y.sum())

    assert found.shape == mask.shape
    assert dice(found, moved_mask) > 0.95
    assert dice(mask, moved_mask) < 0.90  # the move is large enough that the unregistered mask fails the test


@pytest.mark.skipif(not (SHARED / "ixi_t1_2mm").is_dir(), reason="the shared IXI T1s are not here")
def test_one_ixi_head_becomes_a_1mm_thick_slice_brain(ixi, tmp_path: Path) -> None:
    source = sorted((SHARED / "ixi_t1_2mm").glob("IXI*-T1_ds.nii.gz"))[0]
    folder = tmp_path / "ixi"
    folder.mkdir()
    shutil.copyfile(source, folder / source.name)
    out = ixi.make_brains(tmp_path / "brains", folder, png=tmp_path / "png")
    made = out / source.name.replace("_ds", "_brain")
    img, head = nib.load(made), nib.load(source)
    assert img.shape == tuple(2 * s - 1 for s in head.shape)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 1.0)
    np.testing.assert_allclose(img.affine @ [2, 4, 6, 1], head.affine @ [1, 2, 3, 1], atol=1e-4)
    brain = np.asarray(img.dataobj) > 0
    assert 1.0e6 < brain.sum() < 1.9e6  # mm^3: a brain, not the whole head (6 L of foreground)
    assert (tmp_path / "png" / made.name.replace(".nii.gz", ".png")).is_file()
    stamp = json.loads((out / "inputs.json").read_text())
    assert stamp["slab_mm"] == 5.0 and source.name in stamp
    # the same inputs: kept as they are; a folder this script did not make: refused, untouched
    before = made.stat().st_mtime_ns
    ixi.make_brains(out, folder)
    assert made.stat().st_mtime_ns == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="not a folder of IXI brains"):
        ixi.make_brains(other, folder)
    assert (other / "notes.txt").read_text() == "a user's file"
