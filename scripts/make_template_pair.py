#!/usr/bin/env python
"""A healthy registered T1/T2 pair for training beside the shared patients: the MNI avg152 templates, brain only.

The shared data hold three registered tumour patients and, as extra anatomy, the SPM12 MNI average T1 and T2
(``../shared/data/templates_2mm``, 2 mm, whole head with scalp and skull) and ten unpaired IXI T1s. The templates
are a registered pair of the same (average) head, so they can join ``--paired`` training as a fourth pair; the
patients are skull-stripped at 1 mm, so the templates are too:

1. Brain mask (made once, kept in ``scripts/study_data/templates/mni152_brain_2mm.nii.gz`` with an overlay PNG
   checked by eye): ``avg152T1 > 0.4`` (the skull is dark between brain and scalp), eroded 3 voxels (cuts the
   thin bridges to the orbits and temporal muscle), the largest connected component, dilated 4 voxels, then
   3D and slice-wise hole filling (the ventricles, dark in T1, belong to the brain as in the patients' masks).
   1.87 L (CSF included: the MNI brain is larger than an average one).
2. The pair: both templates resampled to 1 mm (trilinear; the mask trilinear then > 0.5; the 1 mm grid spans
   the same voxel centres, so the affine is the 2 mm one with half the spacing), multiplied by the mask, written
   as ``<out>/t1.nii.gz`` and ``<out>/t2.nii.gz`` (float32; training normalises each volume itself).

What the pair is not: a patient. The templates are averages of 152 heads, blurred by registration; they add
healthy anatomy and its T1/T2 relation, not noise, texture or pathology.

Usage::

    python scripts/make_template_pair.py --mask                 # remake the mask and its PNG (study data)
    python scripts/make_template_pair.py --out DIR              # write DIR/t1.nii.gz, DIR/t2.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent.parent / "shared" / "data" / "templates_2mm"
MASK = HERE / "study_data" / "templates" / "mni152_brain_2mm.nii.gz"

THRESHOLD = 0.4  # avg152T1 units (0..1): brain and scalp above, skull and CSF outside the brain below
ERODE, DILATE = 3, 4  # voxels (2 mm)


def brain_mask(t1: np.ndarray) -> np.ndarray:
    """The template's brain (see the module's docstring, step 1)."""
    from scipy import ndimage as ndi

    mask = ndi.binary_erosion(t1 > THRESHOLD, iterations=ERODE)
    labels, n = ndi.label(mask)
    if n == 0:
        raise ValueError("no voxel above the threshold: not the avg152T1 template")
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    mask = ndi.binary_dilation(labels == 1 + int(np.argmax(sizes)), iterations=DILATE)
    mask = ndi.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndi.binary_fill_holes(mask[:, :, z])
    return mask


def upsample(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling onto the grid of half the spacing over the same voxel centres."""
    from scipy import ndimage as ndi

    shape = tuple(2 * s - 1 for s in volume.shape)
    coords = np.meshgrid(*(np.arange(s) / 2.0 for s in shape), indexing="ij")
    out = ndi.map_coordinates(volume.astype(np.float32), coords, order=1)
    return out, affine @ np.diag([0.5, 0.5, 0.5, 1.0])


def overlay(path: Path, t1: np.ndarray, t2: np.ndarray, mask: np.ndarray) -> None:
    """Six axial slices, T1 over T2, outside the mask dimmed to 30 %."""
    from PIL import Image

    rows = []
    for image in (t1, t2):
        cut = [np.rot90(np.where(mask[:, :, z], image[:, :, z], 0.3 * image[:, :, z]))
               for z in np.linspace(15, mask.shape[2] - 12, 6).astype(int)]
        rows.append(np.concatenate(cut, axis=1))
    picture = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(picture).resize((picture.shape[1] * 2, picture.shape[0] * 2)).save(path)


def make_mask(templates: Path = TEMPLATES, out: Path = MASK) -> Path:
    """Write the brain mask (uint8, the templates' 2 mm grid) and its overlay PNG."""
    import nibabel as nib

    t1 = nib.load(templates / "avg152T1.nii")
    t2 = nib.load(templates / "avg152T2.nii")
    mask = brain_mask(np.asarray(t1.dataobj, np.float32))
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), t1.affine), out)
    overlay(out.with_suffix("").with_suffix(".png"), np.asarray(t1.dataobj), np.asarray(t2.dataobj), mask)
    print(f"{out}: {int(mask.sum()) * 8 / 1000:.0f} mL")
    return out


def make_pair(out: Path, templates: Path = TEMPLATES, mask_path: Path = MASK) -> Path:
    """Write ``out/t1.nii.gz`` and ``out/t2.nii.gz`` (1 mm, brain only); returns ``out``. Skips finished pairs."""
    import nibabel as nib

    if (out / "t1.nii.gz").exists() and (out / "t2.nii.gz").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    mask_img = nib.load(mask_path)
    mask, _ = upsample(np.asarray(mask_img.dataobj, np.float32), mask_img.affine)
    for name in ("t1", "t2"):
        img = nib.load(templates / f"avg152{name.upper()}.nii")
        if not np.allclose(img.affine, mask_img.affine):
            raise ValueError(f"{templates}: avg152{name.upper()}.nii is not on the mask's grid")
        volume, affine = upsample(np.asarray(img.dataobj, np.float32), img.affine)
        volume = np.where(mask > 0.5, volume, 0).astype(np.float32)
        tmp = out / f".{name}.tmp.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), tmp)
        tmp.replace(out / f"{name}.nii.gz")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=Path, default=TEMPLATES)
    parser.add_argument("--mask", action="store_true", help=f"remake the brain mask ({MASK.relative_to(HERE.parent)})")
    parser.add_argument("--out", type=Path, help="write the 1 mm brain-only pair into this folder")
    args = parser.parse_args(argv)
    if not (args.templates / "avg152T1.nii").exists():
        print(f"error: {args.templates}: no avg152T1.nii (the shared data are not beside the checkout)",
              file=sys.stderr)
        return 2
    if not args.mask and args.out is None:
        parser.error("give --mask, --out DIR or both")
    if args.mask:
        make_mask(args.templates)
    if args.out is not None:
        print(make_pair(args.out, args.templates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
