"""The one-command demo: the packaged sample T1 translated to T2 by the packaged default model, with a preview."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medsynth.errors import InputError
from medsynth.files import atomic_path
from medsynth.fusion import DEFAULT_FUSION
from medsynth.inference import Translator
from medsynth.pictures import thick_slice_note, to_ras, write_volume_preview

__all__ = ["DATA_DIR", "SAMPLE_T1", "SAMPLE_T2", "preview_notes", "run_demo"]

DATA_DIR = Path(__file__).parent / "data"
SAMPLE_T1 = DATA_DIR / "sample_t1.nii.gz"
SAMPLE_T2 = DATA_DIR / "sample_t2.nii.gz"


def run_demo(out_dir: str | Path, device: str = "auto", axis: str = "axial", model: str | Path | None = None,
             overwrite: bool = False, progress: Any = None, fuse: str = DEFAULT_FUSION) -> dict[str, Any]:
    """Translate the packaged sample T1 into T2 and write the input, the result and a preview PNG.

    Args:
        out_dir: folder for ``sample_t1.nii.gz``, ``sample_t1_to_t2.nii.gz`` and ``preview.png``.
        device: ``auto``, ``cpu`` or ``cuda``.
        axis: slicing axis, or ``all``.
        model: another ``model.pt``; None for the packaged one.
        overwrite: replace the outputs of an earlier demo.
        progress: ``progress(done, total)`` over slices, as :meth:`Translator.translate_file` takes.
        fuse: how ``axis="all"`` combines its three passes (:mod:`medsynth.fusion`).

    Returns:
        Paths written (``input``, ``output``, ``preview``), the seconds the translation took, the device, and
        the preview's ``notes`` (e.g. that the input is thick-slice).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "the demo writes into a folder, and this is a file")
    targets = {"input": out / "sample_t1.nii.gz", "output": out / "sample_t1_to_t2.nii.gz",
               "preview": out / "preview.png"}
    if not overwrite:
        for path in targets.values():
            if path.exists():
                raise InputError(path, "exists; use --overwrite to replace the demo's outputs")
    translator = Translator.from_file(model, device=device)
    tic = time.perf_counter()
    translator.translate_file(SAMPLE_T1, targets["output"], direction="t1-to-t2", axis=axis, fuse=fuse,
                              overwrite=overwrite, progress=progress)
    seconds = time.perf_counter() - tic
    with atomic_path(targets["input"]) as tmp:
        shutil.copyfile(SAMPLE_T1, tmp)
    t1 = nib.load(SAMPLE_T1)
    t1_array = t1.get_fdata(dtype=np.float32)
    panels = [("input T1 (unseen patient)", t1_array),
              (f"synthetic T2 ({AXIS_TITLES.get(axis, axis + ' slices')})",
               nib.load(targets["output"]).get_fdata(dtype=np.float32))]
    if SAMPLE_T2.exists():
        panels.append(("real T2 (for comparison)", nib.load(SAMPLE_T2).get_fdata(dtype=np.float32)))
    notes = preview_notes(t1_array, t1.affine, axis, fuse)
    by = "the packaged model" if model is None else Path(model).name
    preview = write_volume_preview(targets["preview"], panels, t1.affine, notes=notes,
                                   title=f"medsynth demo: T1 -> T2 by {by}, {seconds:.1f} s on {translator.device}")
    return {**targets, "seconds": seconds, "device": str(translator.device), "notes": preview.notes[:-1]}


#: column title of the synthetic volume, by ``--axis``
AXIS_TITLES = {"axial": "axial slices", "coronal": "coronal slices", "sagittal": "sagittal slices",
               "all": "three axes fused"}


def preview_notes(t1: np.ndarray, affine: np.ndarray, axis: str, fuse: str = DEFAULT_FUSION) -> list[str]:
    """Footnotes of the preview: whether the input is thick-slice (its coronal and sagittal rows then look
    striped in every column, the synthetic one included), and what ``--axis all`` did."""
    ras, spacing = to_ras(t1, affine)
    notes = [note for note in [thick_slice_note("input T1", ras, spacing)] if note]
    if axis == "all":
        how = {"mean": "the three results averaged", "median": "the median of the three results",
               "detail": "the axial result kept, with the detail across slices from the other two"}[fuse]
        notes.append(f"three axes fused: the T1 translated slice by slice along axial, coronal and sagittal, {how}")
    return notes
