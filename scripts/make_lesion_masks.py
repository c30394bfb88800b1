#!/usr/bin/env python
"""Lesion masks of the shared T1/T2 patients, made once from the images themselves (no expert labels exist here).

Written to ``scripts/study_data/lesion_masks/<case>.nii.gz`` (uint8, the T1's grid) with an overlay PNG per case
(``<case>.png``: axial slices through the lesion, T1 | T2 | labels) for checking by eye, and ``labels.json``
(``{"1": "oedema", "2": "core"}``, read by ``medsynth-eval --labels``).

How, exactly (every threshold below is a constant of this file):

1. Brain = ``t1 > 0 and t2 > 0``. Each image is divided by its median in the brain (``r1``, ``r2``) and smoothed
   with a 1.5-voxel Gaussian (``s1``, ``s2``).
2. The left-right mirror: the volume flipped along its first voxel axis (x in all three cases), shifted by the
   integer (-8..8 voxels) that correlates best with the original (the midline is not exactly at the centre).
   A tumour is one-sided; CSF (ventricles, sulci) is roughly symmetric. ``mirror_max`` = the mirror after a
   5-voxel maximum filter, so a slightly misaligned or asymmetric ventricle or sulcus does not count as asymmetry.
3. Label 1, **oedema** (T2-bright, one-sided, not CSF): ``s2 > 1.4`` (40 % above the brain's median T2) and
   ``s2 - mirror_max(s2) > 0.3`` and ``s1 >`` the CSF level of T1 (the median ``r1`` of the brightest 2 % of T2
   voxels, i.e. of CSF and fluid) and more than 6 voxels from the midline (no asymmetry is defined there); then a
   binary opening (2 iterations, removes thin sulcal ribbons), connected components of at least 2,000 voxels
   (2 mL) of which at most half lie within 6 mm of the brain's surface (sulcal CSF of the side the mass did not
   compress), a closing (2 iterations) and 3D hole filling.
4. Label 2, **core** (T1-bright tumour, e.g. enhancement, where the T1 was taken after contrast): within 5 voxels
   of label 1, ``s1 - mirror_max(s1) > 0.1`` and ``s1 >`` the T1 level of white matter (the median ``r1`` of the
   darkest 20 % of T2 voxels); connected components of at least 200 voxels. Label 2 overrides label 1.

What this is not: a segmentation of tumour sub-regions. Fluid-filled cavities (cysts, necrosis) enter label 1
when their T1 is above the CSF level (else the hole filling of step 3 takes them in when they are enclosed);
a non-enhancing tumour with intermediate T2 is in neither label. See README.md beside the masks for what each
case's overlay shows.

Usage::

    python scripts/make_lesion_masks.py                 # every case of ../shared/data/brain_t1t2
    python scripts/make_lesion_masks.py --out DIR CASE ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "brain_t1t2"
OUT = HERE / "study_data" / "lesion_masks"
LABELS = {1: "oedema", 2: "core"}

SMOOTH = 1.5  # voxels: Gaussian before thresholding
T2_HIGH = 1.4  # times the brain's median T2
ASYMMETRY = 0.3  # T2 above the mirrored side's 5-voxel maximum, in units of the median
MIRROR_WINDOW = 5  # voxels: maximum filter of the mirror
MIDLINE = 6  # voxels either side of the midline left out
OPENING, CLOSING = 2, 2  # iterations
MIN_VOXELS = 2000  # label 1 components (1 mm voxels: 2 mL)
SURFACE_MM, SURFACE_FRACTION = 6.0, 0.5
CORE_NEAR = 5  # voxels around label 1 where a core may be
CORE_ASYMMETRY = 0.1
MIN_CORE_VOXELS = 200


def mirror_shift(x: np.ndarray, brain: np.ndarray, search: int = 8) -> int:
    """The integer shift along axis 0 that best aligns the left-right mirror of ``x`` with ``x`` (in the brain)."""
    best = (-2.0, 0)
    values = x[brain][::50]
    for shift in range(-search, search + 1):
        flipped = np.roll(x[::-1], shift, axis=0)
        corr = float(np.corrcoef(values, flipped[brain][::50])[0, 1])
        best = max(best, (corr, shift))
    return best[1]


def lesion_labels(t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The label volume (uint8: 0 background, 1 oedema, 2 core) of one co-registered T1/T2 pair, and the levels
    used (for the README)."""
    from scipy import ndimage as ndi

    brain = (t1 > 0) & (t2 > 0)
    r1 = np.where(brain, t1 / np.median(t1[brain]), 0).astype(np.float32)
    r2 = np.where(brain, t2 / np.median(t2[brain]), 0).astype(np.float32)
    s1, s2 = ndi.gaussian_filter(r1, SMOOTH), ndi.gaussian_filter(r2, SMOOTH)
    shift = mirror_shift(s2, brain)

    def mirror_max(x: np.ndarray) -> np.ndarray:
        return ndi.maximum_filter(np.roll(x[::-1], shift, axis=0), size=MIRROR_WINDOW)

    csf_t1 = float(np.median(r1[brain & (r2 > np.percentile(r2[brain], 98))]))
    wm_t1 = float(np.median(r1[brain & (r2 < np.percentile(r2[brain], 20))]))
    n = t1.shape[0]
    from_midline = np.abs(np.arange(n) - (n - 1 + shift) / 2)[:, None, None]
    candidate = brain & (s2 > T2_HIGH) & (s2 - mirror_max(s2) > ASYMMETRY) & (s1 > csf_t1) & (from_midline > MIDLINE)
    candidate = ndi.binary_opening(candidate, iterations=OPENING)
    depth = ndi.distance_transform_edt(ndi.binary_fill_holes(brain))
    components, count = ndi.label(candidate)
    index = np.arange(1, count + 1)
    sizes = ndi.sum(candidate, components, index)
    near_surface = ndi.mean(depth <= SURFACE_MM, components, index)
    keep = index[(sizes >= MIN_VOXELS) & (near_surface <= SURFACE_FRACTION)]
    oedema = ndi.binary_fill_holes(ndi.binary_closing(np.isin(components, keep), iterations=CLOSING) & brain)

    near = ndi.binary_dilation(oedema, iterations=CORE_NEAR) & brain
    core = near & (s1 - mirror_max(s1) > CORE_ASYMMETRY) & (s1 > wm_t1)
    components, count = ndi.label(core)
    sizes = ndi.sum(core, components, np.arange(1, count + 1))
    core = np.isin(components, 1 + np.nonzero(sizes >= MIN_CORE_VOXELS)[0])

    labels = np.zeros(t1.shape, np.uint8)
    labels[oedema] = 1
    labels[core] = 2
    levels = {"mirror_shift": shift, "csf_t1": csf_t1, "wm_t1": wm_t1,
              "oedema_ml": float(np.count_nonzero(labels == 1)) / 1000,  # 1 mm voxels
              "core_ml": float(np.count_nonzero(labels == 2)) / 1000}
    return labels, levels


def overlay(path: Path, t1: np.ndarray, t2: np.ndarray, labels: np.ndarray, affine: np.ndarray, title: str) -> None:
    """Five axial slices through the lesion's extent: T1 | T2 | labels over T2 (outlines on T1 and T2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    # display in RAS, anterior up: the patient's left on the image's left (neurological convention)
    ornt = nib.orientations.io_orientation(affine)
    t1, t2, labels = (nib.orientations.apply_orientation(x, ornt) for x in (t1, t2, labels))
    brain = (t1 > 0) & (t2 > 0)
    z = np.nonzero(labels.any(axis=(0, 1)))[0]
    slices = np.linspace(z.min(), z.max(), 7).astype(int)[1:-1] if len(z) else [t1.shape[2] // 2]
    fig, axes = plt.subplots(len(slices), 3, figsize=(9, 3 * len(slices)))
    colours = {1: "red", 2: "cyan"}
    for row, k in zip(np.atleast_2d(axes), slices):
        for ax, (name, image) in zip(row, (("T1", t1), ("T2", t2), ("labels", t2))):
            lo, hi = np.percentile(image[brain], [0.5, 99.5])
            view = lambda a: np.rot90(a[:, :, k])  # noqa: E731 - RAS x right, y up
            ax.imshow(view(image), cmap="gray", vmin=lo, vmax=hi * (1.6 if name == "labels" else 1.0))
            for value, colour in colours.items():
                part = view(labels == value)
                if not part.any():
                    continue
                if name == "labels":
                    ax.imshow(np.ma.masked_where(~part, part), cmap=matplotlib.colors.ListedColormap([colour]),
                              alpha=0.5, interpolation="nearest")
                else:
                    ax.contour(part, [0.5], colors=colour, linewidths=0.8)
            ax.set_title(f"{name}, axial {k}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{title}\nred: 1 oedema, cyan: 2 core (image left = patient left)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=55)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help="case folder names (default: every case)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: the shared T1/T2 patients are needed", file=sys.stderr)
        return 2
    import nibabel as nib

    from medsynth.files import atomic_path, write_atomic

    cases = args.cases or sorted(p.name for p in args.data.iterdir() if (p / "t1.nii.gz").exists())
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for case in cases:
        t1_img = nib.load(str(args.data / case / "t1.nii.gz"))
        t1 = np.asarray(t1_img.get_fdata(dtype=np.float32))
        t2 = np.asarray(nib.load(str(args.data / case / "t2.nii.gz")).get_fdata(dtype=np.float32))
        labels, levels = lesion_labels(t1, t2)
        image = nib.Nifti1Image(labels, t1_img.affine, t1_img.header)
        image.set_data_dtype(np.uint8)
        image.header.set_slope_inter(1, 0)
        with atomic_path(args.out / f"{case}.nii.gz") as tmp:
            nib.save(image, str(tmp))  # the temporary name ends in .nii.gz: nibabel compresses it
        overlay(args.out / f"{case}.png", t1, t2, labels, t1_img.affine, case)
        summary[case] = levels
        print(f"{case}: oedema {levels['oedema_ml']:.1f} mL, core {levels['core_ml']:.1f} mL "
              f"(mirror shift {levels['mirror_shift']}, CSF T1 {levels['csf_t1']:.2f}, WM T1 {levels['wm_t1']:.2f})")
    write_atomic(args.out / "labels.json", json.dumps({str(k): v for k, v in LABELS.items()}, indent=2) + "\n")
    write_atomic(args.out / "levels.json", json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
