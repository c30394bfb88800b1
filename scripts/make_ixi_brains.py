#!/usr/bin/env python
"""Unpaired healthy T1s for training beside the shared patients: the ten IXI T1s, brain only, 1 mm, thick-slice.

The shared data hold ten IXI T1s (``../shared/data/ixi_t1_2mm``: 2 mm, sagittal, whole head with scalp and skull)
and no T2 of them, so they can only join training as unpaired volumes (``medsynth-train --unpaired-t1``: the
adversarial and cycle terms see them, the paired terms do not). The patients are skull-stripped, 1 mm in-plane and
thick-slice along S-I, so the IXI heads are made so too:

1. Brain mask: the MNI template's brain mask (``scripts/study_data/templates/mni152_brain_2mm.nii.gz``, made by
   ``make_template_pair.py``) carried onto each IXI T1 by an affine registration of the avg152T1 template to it
   (SimpleITK: Mattes mutual information, three resolutions, moments-centred start), linear interpolation then
   > 0.5, the largest connected component, holes filled. An overlay PNG per head (``--png DIR``) is for checking
   by eye: a registered template mask is looser than a skull-stripping tool's, so a rim of CSF and dura remains.
2. The volume: resampled to 1 mm (trilinear, the same voxel centres; ``make_template_pair.upsample``), averaged
   over 5 mm slabs along S-I as the patients' thick-slice scans resampled to 1 mm hold
   (``make_template_pair.thick_slices``), then multiplied by the mask; float32, the IXI file's qform/sform codes.

The heads are written into one folder with a stamp of their inputs (``inputs.json``), built in a temporary folder
and moved into place as a whole; a folder whose stamp differs is made again.

Usage::

    python scripts/make_ixi_brains.py --out DIR [--png PNGDIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_template_pair import MASK, TEMPLATES, _digest, is_current, stamped_build, thick_slices, upsample  # noqa: E402

IXI = HERE.parent.parent / "shared" / "data" / "ixi_t1_2mm"
SLAB_MM = 5.0
VERSION = 1  # of the volumes this script writes: a change makes existing ones stale


def register_mask(fixed_path: Path, template_path: Path = TEMPLATES / "avg152T1.nii",
                  mask_path: Path = MASK) -> np.ndarray:
    """The template's brain mask on ``fixed_path``'s grid (nibabel's axis order), by affine registration."""
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    fixed = sitk.ReadImage(str(fixed_path), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(template_path), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(mask_path), sitk.sitkFloat32)
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=300,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(start, inPlace=False)
    transform = reg.Execute(fixed, moving)
    warped = sitk.Resample(mask, fixed, transform, sitk.sitkLinear, 0.0)
    # SimpleITK arrays are (z, y, x); nibabel's are (x, y, z)
    brain = np.transpose(sitk.GetArrayFromImage(warped), (2, 1, 0)) > 0.5
    labels, n = ndi.label(brain)
    if n == 0:
        raise ValueError(f"{fixed_path}: the registered template mask is empty (registration failed)")
    sizes = ndi.sum(brain, labels, range(1, n + 1))
    return ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def overlay(path: Path, volume: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
    """Five axial and one sagittal slice of the 1 mm head, outside the mask dimmed to 30 %."""
    import nibabel as nib
    from PIL import Image

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(volume, ornt)
    ras_mask = nib.orientations.apply_orientation(mask.astype(np.float32), ornt) > 0.5
    top = np.percentile(ras[ras > 0], 99.5)
    image = np.clip(ras / top, 0, 1)
    shown = np.where(ras_mask, image, 0.3 * image)
    cuts = [np.rot90(shown[:, :, int(z)]) for z in np.linspace(0.3, 0.8, 5) * shown.shape[2]]
    sag = np.rot90(shown[shown.shape[0] // 2 + 8])
    height = max(c.shape[0] for c in [*cuts, sag])
    pad = [np.pad(c, ((0, height - c.shape[0]), (0, 0))) for c in [*cuts, sag]]
    picture = (np.concatenate(pad, axis=1) * 255).astype(np.uint8)
    Image.fromarray(picture).save(path)


def make_brains(out: Path, ixi: Path = IXI, png: Path | None = None) -> Path:
    """Write ``out/<IXI name>.nii.gz`` for every IXI T1 (see the module's docstring); returns ``out``. Heads made
    from the same inputs by the same version are kept.

    Raises:
        ValueError: no IXI T1 in ``ixi``, or ``out`` exists and is not a folder this script made.
    """
    import nibabel as nib

    sources = sorted(ixi.glob("IXI*-T1_ds.nii.gz"))
    if not sources:
        raise ValueError(f"{ixi}: no IXI*-T1_ds.nii.gz here")
    stamp = {"version": VERSION, "slab_mm": SLAB_MM, "template": _digest(TEMPLATES / "avg152T1.nii"),
             "mask": _digest(MASK), **{p.name: _digest(p) for p in sources}}
    if is_current(out, stamp, [p.name.replace("_ds", "_brain") for p in sources]):
        return out
    with stamped_build(out, stamp, "a folder of IXI brains") as build:
        if png is not None:
            png.mkdir(parents=True, exist_ok=True)
        for path in sources:
            img = nib.load(path)
            mask = register_mask(path)
            head, affine = upsample(np.asarray(img.dataobj, np.float32), img.affine)
            mask1, _ = upsample(mask.astype(np.float32), img.affine)
            volume = thick_slices(head, affine, SLAB_MM)
            volume = np.where(mask1 > 0.5, np.maximum(volume, 0), 0).astype(np.float32)
            result = nib.Nifti1Image(volume, affine)
            result.set_sform(affine, int(img.header["sform_code"]) or 1)
            result.set_qform(affine, int(img.header["qform_code"]) or 1)
            name = path.name.replace("_ds", "_brain")
            nib.save(result, build / name)
            litres = float((mask1 > 0.5).sum()) / 1e6
            print(f"{name}: brain {litres:.2f} L", flush=True)
            if png is not None:
                overlay(png / name.replace(".nii.gz", ".png"), head, mask1 > 0.5, affine)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=IXI)
    parser.add_argument("--out", type=Path, required=True, help="folder for the 1 mm brain-only heads")
    parser.add_argument("--png", type=Path, default=None, help="write an overlay PNG per head here")
    args = parser.parse_args(argv)
    try:
        make_brains(args.out, args.ixi, args.png)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
