#!/usr/bin/env python
"""A healthy registered T1/T2 pair for training beside the shared patients: the MNI avg152 templates, brain only.

The shared data hold three registered tumour patients and, as extra anatomy, the SPM12 MNI average T1 and T2
(``../shared/data/templates_2mm``, 2 mm, whole head with scalp and skull) and ten unpaired IXI T1s. The templates
are a registered pair of the same (average) head, so they can join ``--paired`` training as one more pair; the
patients are skull-stripped at 1 mm, so the templates are too:

1. Brain mask (made once, kept in ``scripts/study_data/templates/mni152_brain_2mm.nii.gz`` with an overlay PNG
   checked by eye): ``avg152T1 > 0.4`` (the skull is dark between brain and scalp), eroded 3 voxels (cuts the
   thin bridges to the orbits and temporal muscle), the largest connected component, dilated 4 voxels, then
   3D and slice-wise hole filling (the ventricles, dark in T1, belong to the brain as in the patients' masks).
   1.87 L (CSF included: the MNI brain is larger than an average one).
2. The pair: both templates resampled to 1 mm (trilinear; the mask trilinear then > 0.5; the 1 mm grid spans
   the same voxel centres, so the affine is the 2 mm one with half the spacing), multiplied by the mask, written
   as ``<out>/t1.nii.gz`` and ``<out>/t2.nii.gz`` (float32, the templates' qform/sform codes; training normalises
   each volume itself). Both are built in a temporary folder beside ``<out>`` and moved into place together with a
   stamp of their inputs (``<out>/inputs.json``); a pair whose stamp differs (another mask, other templates, a new
   version of this script) is made again.
3. Optionally (``--slab-mm MM``) thick slices, as the patients' T1s and T2s were acquired (their measured
   through-plane blur is x5-6 along S-I on a 1 mm grid): before the brain mask is applied, the whole-head 1 mm
   volumes are averaged over slabs of MM along S-I and linearly interpolated back onto the 1 mm grid, which is
   what a thick-slice scan resampled to 1 mm holds. The mask stays sharp (the patients were skull-stripped after
   resampling).

What the pair is not: a patient. The templates are averages of 152 heads, blurred by registration; they add
healthy anatomy and its T1/T2 relation, not noise, texture or pathology.

Usage::

    python scripts/make_template_pair.py --mask                 # remake the mask and its PNG (study data)
    python scripts/make_template_pair.py --out DIR              # write DIR/t1.nii.gz, DIR/t2.nii.gz
    python scripts/make_template_pair.py --out DIR --slab-mm 5  # the same with 5 mm slices along S-I
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent.parent / "shared" / "data" / "templates_2mm"
MASK = HERE / "study_data" / "templates" / "mni152_brain_2mm.nii.gz"

THRESHOLD = 0.4  # avg152T1 units (0..1): brain and scalp above, skull and CSF outside the brain below
ERODE, DILATE = 3, 4  # voxels (2 mm)
VERSION = 1  # of the pair this script writes: a change makes existing pairs stale


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


def slab_width(slab_mm: float, spacing: float) -> int:
    """The number of voxels of ``spacing`` mm in a slab ``slab_mm`` thick.

    Raises:
        ValueError: ``slab_mm`` not finite and positive, or thinner than two voxels.
    """
    if not np.isfinite(slab_mm) or slab_mm <= 0:
        raise ValueError(f"slab thickness {slab_mm} mm: must be a positive number")
    width = int(round(slab_mm / spacing))
    if width < 2:
        raise ValueError(f"slab thickness {slab_mm} mm: under two voxels of {spacing:g} mm")
    return width


def thick_slices(volume: np.ndarray, affine: np.ndarray, slab_mm: float) -> np.ndarray:
    """``volume`` as a scan of slices ``slab_mm`` thick along S-I resampled back onto its grid: the mean of each
    slab, linearly interpolated between slab centres (held beyond the first and last centre).

    Raises:
        ValueError: ``slab_mm`` not finite and positive, or thinner than two voxels.
    """
    import nibabel as nib

    axis = [code in "SI" for code in nib.aff2axcodes(affine)].index(True)
    width = slab_width(slab_mm, float(np.linalg.norm(affine[:3, axis])))
    moved = np.moveaxis(volume.astype(np.float32), axis, -1)
    n = moved.shape[-1]
    starts = np.arange(0, n, width)
    slabs = np.stack([moved[..., a:a + width].mean(axis=-1) for a in starts], axis=-1)
    centres = (starts + np.minimum(starts + width, n) - 1) / 2.0  # the last slab may be thinner
    position = np.interp(np.arange(n), centres, np.arange(len(starts)))
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(starts) - 1)
    frac = (position - low).astype(np.float32)
    out = slabs[..., low] * (1 - frac) + slabs[..., high] * frac
    return np.moveaxis(out, -1, axis).astype(np.float32)


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


def _load(path: Path, what: str):
    """A NIfTI image, or ValueError naming the file and the problem."""
    import nibabel as nib

    if not path.is_file():
        raise ValueError(f"{path}: no such file ({what})")
    try:
        img = nib.load(path)
        np.asarray(img.dataobj[..., 0])  # reads the header's data type and offset: a truncated file fails here
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ValueError(f"{path}: not a readable NIfTI image ({type(exc).__name__})") from None
    if img.ndim != 3:
        raise ValueError(f"{path}: {img.ndim}-D, expected a 3-D {what}")
    return img


def make_mask(templates: Path = TEMPLATES, out: Path = MASK) -> Path:
    """Write the brain mask (uint8, the templates' 2 mm grid) and its overlay PNG, each under a temporary name
    first."""
    import nibabel as nib

    t1 = _load(templates / "avg152T1.nii", "T1 template")
    t2 = _load(templates / "avg152T2.nii", "T2 template")
    if t1.shape != t2.shape or not np.allclose(t1.affine, t2.affine):
        raise ValueError(f"{templates}: avg152T1.nii and avg152T2.nii are not on one grid")
    mask = brain_mask(np.asarray(t1.dataobj, np.float32))
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix("").with_suffix(".png")
    tmp = out.parent / f".{out.name}.tmp.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), t1.affine), tmp)
    tmp_png = png.parent / f".{png.stem}.tmp.png"
    overlay(tmp_png, np.asarray(t1.dataobj), np.asarray(t2.dataobj), mask)
    tmp.replace(out)
    tmp_png.replace(png)
    print(f"{out}: {int(mask.sum()) * 8 / 1000:.0f} mL")
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_current(out: Path, stamp: dict, names: Sequence[str]) -> bool:
    """Whether ``out`` holds ``names`` made from the inputs ``stamp`` describes (its ``inputs.json`` equal)."""
    try:
        return json.loads((out / "inputs.json").read_text()) == stamp and all((out / n).is_file() for n in names)
    except (OSError, ValueError):
        return False


@contextmanager
def stamped_build(out: Path, stamp: dict, what: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; on success ``stamp`` is written as its ``inputs.json`` and
    it replaces ``out`` as a whole (the files and their stamp appear together), else it is removed.

    Raises:
        ValueError: ``out`` exists and is neither empty nor stamped: only a folder this script made (stale) or an
            empty one is replaced, never a user's other files (``what`` names what it should have been).
    """
    if out.exists() and not (out.is_dir() and ((out / "inputs.json").is_file() or not any(out.iterdir()))):
        raise ValueError(f"{out}: exists and is not {what} made by this script")
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield build
        (build / "inputs.json").write_text(json.dumps(stamp, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        build.replace(out)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def make_pair(out: Path, templates: Path = TEMPLATES, mask_path: Path = MASK, slab_mm: float = 0.0) -> Path:
    """Write ``out/t1.nii.gz`` and ``out/t2.nii.gz`` (1 mm, brain only; with ``slab_mm``, thick slices along S-I:
    :func:`thick_slices`); returns ``out``. A pair made from the same inputs and settings by the same version is
    kept; any other content of ``out`` is replaced as a whole.

    Raises:
        ValueError: a missing or unreadable template or mask, or one not on the others' grid (naming the file),
            or a bad ``slab_mm``.
    """
    import nibabel as nib

    if slab_mm:
        slab_width(slab_mm, 1.0)  # a bad value refused before any work, on the pair's 1 mm grid
    sources = {"t1": templates / "avg152T1.nii", "t2": templates / "avg152T2.nii", "mask": mask_path}
    images = {name: _load(path, f"{name} template" if name != "mask" else "brain mask")
              for name, path in sources.items()}
    for name in ("t1", "t2"):
        if images[name].shape != images["mask"].shape or not np.allclose(images[name].affine, images["mask"].affine):
            raise ValueError(f"{sources[name]}: not on the brain mask's grid ({mask_path})")
    stamp = {"version": VERSION, **{name: _digest(path) for name, path in sources.items()}}
    if slab_mm:
        stamp["slab_mm"] = float(slab_mm)
    if is_current(out, stamp, ("t1.nii.gz", "t2.nii.gz")):
        return out
    with stamped_build(out, stamp, "a template pair folder") as build:
        mask, _ = upsample(np.asarray(images["mask"].dataobj, np.float32), images["mask"].affine)
        for name in ("t1", "t2"):
            img = images[name]
            volume, affine = upsample(np.asarray(img.dataobj, np.float32), img.affine)
            if slab_mm:
                volume = thick_slices(volume, affine, slab_mm)
            volume = np.where(mask > 0.5, volume, 0).astype(np.float32)
            result = nib.Nifti1Image(volume, affine)
            result.set_sform(affine, int(img.header["sform_code"]) or 2)
            result.set_qform(affine, int(img.header["qform_code"]) or 2)
            nib.save(result, build / f"{name}.nii.gz")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=Path, default=TEMPLATES)
    parser.add_argument("--mask", action="store_true", help=f"remake the brain mask ({MASK.relative_to(HERE.parent)})")
    parser.add_argument("--out", type=Path, help="write the 1 mm brain-only pair into this folder")
    parser.add_argument("--slab-mm", type=float, default=0.0,
                        help="thick slices of this many mm along S-I, as thick-slice scans resampled to 1 mm (default: none)")
    args = parser.parse_args(argv)
    if not args.mask and args.out is None:
        parser.error("give --mask, --out DIR or both")
    try:
        if args.mask:
            make_mask(args.templates)
        if args.out is not None:
            print(make_pair(args.out, args.templates, slab_mm=args.slab_mm))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
