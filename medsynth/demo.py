"""The one-command demo: the packaged sample T1 translated to T2 by the packaged default model, with a preview."""

from __future__ import annotations

import io as _stdio
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsynth.files import atomic_path, write_atomic

DATA_DIR = Path(__file__).parent / "data"
SAMPLE_T1 = DATA_DIR / "sample_t1.nii.gz"
SAMPLE_T2 = DATA_DIR / "sample_t2.nii.gz"


def write_preview(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], affine: np.ndarray,
                  title: str = "") -> Path:
    """PNG of several co-registered volumes side by side, one column each, axial/coronal/sagittal rows through
    the centre of the foreground, in radiological view; each volume scaled by its own 0.5-99.5 percentiles.

    Args:
        path: the PNG to write (atomically).
        panels: (column title, (I, J, K) array) pairs sharing ``affine``.
        affine: voxel-to-RAS of the arrays.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsynth.evaluation import _slices, _to_ras

    first, spacing = _to_ras(panels[0][1], affine)
    fg = np.argwhere(first > np.percentile(first, 50))
    centre = [int(round(c)) for c in (fg.mean(axis=0) if len(fg) else np.array(first.shape) / 2)]
    columns = []
    for name, array in panels:
        ras = _to_ras(np.asarray(array, np.float32), affine)[0]
        lo, hi = np.percentile(ras[ras > ras.min()] if (ras > ras.min()).any() else ras, [0.5, 99.5])
        columns.append((name, np.clip((ras - lo) / max(hi - lo, 1e-6), 0, 1)))
    views = [_slices(c[1], centre) for c in columns]
    heights = [float(np.clip(sl.shape[0] * spacing[v] / (sl.shape[1] * spacing[h]), 0.3, 3.0))
               for _, sl, h, v, _ in views[0]]
    fig = plt.figure(figsize=(2.6 * len(columns), 2.6 * sum(heights) + 0.9), facecolor="black")
    grid = fig.add_gridspec(len(views[0]), len(columns), height_ratios=heights)
    for c, ((name, _), column) in enumerate(zip(columns, views)):
        for r, (view, sl, h_axis, v_axis, origin) in enumerate(column):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(sl, cmap="gray", vmin=0, vmax=1, origin=origin, interpolation="nearest",
                      aspect=float(spacing[v_axis] / spacing[h_axis]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, color="white", fontsize=10)
            if c == 0:
                ax.set_ylabel(view, color="white", fontsize=9)
    fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout()
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="black")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def run_demo(out_dir: str | Path, device: str = "auto", axis: str = "axial", model: str | Path | None = None,
             overwrite: bool = False, progress: Any = None) -> dict[str, Any]:
    """Translate the packaged sample T1 into T2 and write the input, the result and a preview PNG.

    Returns:
        Paths written and the seconds the translation took.
    """
    from medsynth.errors import InputError
    from medsynth.inference import Translator

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
    translator.translate_file(SAMPLE_T1, targets["output"], direction="t1-to-t2", axis=axis, overwrite=overwrite,
                              progress=progress)
    seconds = time.perf_counter() - tic
    with atomic_path(targets["input"]) as tmp:
        shutil.copyfile(SAMPLE_T1, tmp)
    import nibabel as nib

    t1 = nib.load(SAMPLE_T1)
    panels = [("input T1 (unseen patient)", t1.get_fdata(dtype=np.float32)),
              ("synthetic T2 (medsynth)", nib.load(targets["output"]).get_fdata(dtype=np.float32))]
    if SAMPLE_T2.exists():
        panels.append(("real T2 (for comparison)", nib.load(SAMPLE_T2).get_fdata(dtype=np.float32)))
    write_preview(targets["preview"], panels, t1.affine,
                  title=f"medsynth demo: T1 -> T2, {axis} slices, {seconds:.1f} s on {translator.device}")
    return {**targets, "seconds": seconds, "device": str(translator.device)}
