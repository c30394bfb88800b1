"""The pictures people look at: training sample grids, evaluation figures, the demo preview, enhancement previews.

Every volume picture is drawn the same way: the array is reoriented to RAS for display (:func:`to_ras`) and
cut through a centre into axial, coronal and sagittal views in radiological convention, the patient's right on
the viewer's left, as Slicer shows them (:func:`radiological_views`). A 2D image (I, J, 1) is shown as it is
stored, rows downwards. Every PNG is written atomically.

Example:
    >>> ras, spacing = to_ras(volume, affine)                                   # doctest: +SKIP
    >>> [name for name, *_ in radiological_views(ras, (40, 50, 30))]           # doctest: +SKIP
    ['axial', 'coronal', 'sagittal']
"""

from __future__ import annotations

import io as _stdio
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medsynth.files import atomic_path, write_atomic

__all__ = [
    "View",
    "radiological_views",
    "save_grid",
    "to_ras",
    "write_before_after",
    "write_case_figure",
    "write_volume_preview",
]

#: One view of a volume: (name, 2D slice, horizontal axis, vertical axis, imshow origin).
View = tuple[str, np.ndarray, int, int, str]


# --------------------------------------------------------------------------------------------- orientation


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array reoriented to RAS (for display only) and its voxel sizes in that order.

    Args:
        array: (I, J, K) voxels.
        affine: voxel-to-RAS matrix of ``array``.

    Returns:
        (the reoriented array, voxel sizes along its axes in mm).
    """
    # nibabel: importing it costs ~0.4 s, and this module is imported on the way to every --help
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.where(spacing > 0, spacing, 1.0)
    ras = nio.apply_orientation(array, ornt)
    return ras, spacing[np.argsort(ornt[:, 0].astype(int))]


def radiological_views(volume: np.ndarray, centre: Sequence[int]) -> list[View]:
    """Views of a RAS volume through ``centre``: (name, 2D slice, horizontal axis, vertical axis, origin).

    Volumes give axial, coronal and sagittal slices in radiological convention (the patient's right on
    the viewer's left); a 2D image (I, J, 1) gives itself, rows downwards, as it is stored.
    """
    if volume.shape[2] == 1:
        return [("image", volume[:, :, 0], 1, 0, "upper")]
    i, j, k = centre
    return [
        ("axial", volume[::-1, :, k].T, 0, 1, "lower"),
        ("coronal", volume[::-1, j, :].T, 0, 2, "lower"),
        ("sagittal", volume[i, ::-1, :].T, 1, 2, "lower"),
    ]


def _row_heights(views: Sequence[View], spacing: np.ndarray) -> list[float]:
    """Row heights that follow each view's physical height/width, so no row is mostly white space."""
    return [float(np.clip(sl.shape[0] * spacing[v] / (sl.shape[1] * spacing[h]), 0.3, 3.0)) for _, sl, h, v, _ in views]


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    # matplotlib: ~0.3 s to import, needed only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------- training


def save_grid(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    """Write a PNG grid of [-1, 1] images (rows of equal-size tiles, 2 px gaps), atomically.

    Args:
        path: the PNG to write.
        rows: rows of torch tensors, each a (x, y) slice in RAS order (singleton dimensions are squeezed);
            shown in radiological view: anterior (or superior) up, the patient's right on the left.
    """
    tiles = [[((t.detach().float().cpu().squeeze().clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for t in row]
             for row in rows]
    w, h = tiles[0][0].shape  # shown transposed below
    gap = 2
    n_cols = max(len(r) for r in tiles)
    canvas = np.full((len(tiles) * (h + gap) - gap, n_cols * (w + gap) - gap), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            # slices are (x, y) in RAS order: transposed and flipped so that anterior (or superior) is up and the
            # patient's right is on the left, the radiological view of medsynth-eval's figures and of Slicer
            canvas[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = np.flipud(tile.T)[:, ::-1]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------- evaluation


def write_case_figure(path: Path, panels: Sequence[tuple[str, np.ndarray, str]], mask: np.ndarray,
                      affine: np.ndarray, title: str) -> Path:
    """PNG of one evaluated case: rows axial/coronal/sagittal through the mask centre, one column per panel.

    Args:
        path: the PNG to write (atomically).
        panels: (column title, image normalised to [0, 1], colour map) triples; ``"gray"`` images are shown on
            0-1, ``"inferno"`` panels are absolute errors, shown on 0-0.5 with one shared colour bar.
        mask: the evaluation mask, (I, J, K) or (I, J) like the panels; its centre picks the slices.
        affine: voxel-to-RAS of the arrays.
        title: figure title (the case and its metrics).
    """
    plt = _pyplot()
    if mask.ndim == 2:
        mask = mask[..., None]
        panels = [(t, a[..., None] if a.ndim == 2 else a, c) for t, a, c in panels]
    mask_ras, spacing = to_ras(mask.astype(np.float32), affine)
    centre = [int(round(c)) for c in np.argwhere(mask_ras > 0).mean(axis=0)]
    views = [radiological_views(to_ras(p[1], affine)[0], centre) for p in panels]
    n_rows, n_cols = len(views[0]), len(panels)
    heights = _row_heights(views[0], spacing)
    fig = plt.figure(figsize=(2.3 * n_cols + 0.7, 2.3 * sum(heights) + 0.3 * n_rows + 0.9))
    # A narrow last column holds one colour bar: every error panel uses the same 0-0.5 scale.
    grid = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[1.0] * n_cols + [0.05], height_ratios=heights)
    error_image = None
    for c, ((column, _, cmap), panel_views) in enumerate(zip(panels, views)):
        for r, (view, sl, h_axis, v_axis, origin) in enumerate(panel_views):
            ax = fig.add_subplot(grid[r, c])
            vmax = 0.5 if cmap == "inferno" else 1.0
            im = ax.imshow(sl, cmap=cmap, vmin=0.0, vmax=vmax, origin=origin, interpolation="nearest",
                           aspect=float(spacing[v_axis] / spacing[h_axis]))  # fmt: skip
            if cmap == "inferno":
                error_image = im
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, fontsize=9)
            if c == 0:
                ax.set_ylabel(view, fontsize=9)
    if error_image is not None:
        cbar = fig.colorbar(error_image, cax=fig.add_subplot(grid[:, -1]))
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("absolute error (normalised)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    shown = "as stored" if mask.shape[2] == 1 else "radiological view"
    fig.text(0.5, 0.005, f"intensities normalised to [0, 1] in the mask; errors on 0-0.5; {shown}",
             ha="center", fontsize=7, color="0.4")  # fmt: skip
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------------------------- demo


def write_volume_preview(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], affine: np.ndarray,
                         title: str = "") -> Path:
    """PNG of several co-registered volumes side by side, one column each, axial/coronal/sagittal rows through
    the centre of the foreground, in radiological view; each volume scaled by its own 0.5-99.5 percentiles.

    Args:
        path: the PNG to write (atomically).
        panels: (column title, (I, J, K) array) pairs sharing ``affine``.
        affine: voxel-to-RAS of the arrays.
        title: figure title.
    """
    plt = _pyplot()
    first, spacing = to_ras(panels[0][1], affine)
    fg = np.argwhere(first > np.percentile(first, 50))
    centre = [int(round(c)) for c in (fg.mean(axis=0) if len(fg) else np.array(first.shape) / 2)]
    columns = []
    for name, array in panels:
        ras = to_ras(np.asarray(array, np.float32), affine)[0]
        lo, hi = np.percentile(ras[ras > ras.min()] if (ras > ras.min()).any() else ras, [0.5, 99.5])
        columns.append((name, np.clip((ras - lo) / max(hi - lo, 1e-6), 0, 1)))
    views = [radiological_views(c[1], centre) for c in columns]
    heights = _row_heights(views[0], spacing)
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


# --------------------------------------------------------------------------------------------- enhancement


def write_before_after(path: Path, before: np.ndarray, after: np.ndarray, value_range: tuple[float, float],
                       max_rows: int = 1024) -> Path:
    """Write an 8-bit PNG: ``before | after``, both windowed by ``value_range``, labelled, atomically.

    Args:
        path: the PNG to write.
        before: the 2-D image before enhancement.
        after: the same image after, same shape.
        value_range: (min, max) mapped to black and white in both.
        max_rows: taller images are shrunk (anti-aliased) to this many rows.
    """
    # scikit-image: resize pulls in scipy.ndimage (~0.5 s), needed only for tall images
    from skimage.transform import resize

    lo, hi = value_range
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    tiles = []
    for a in (before, after):
        a = np.asarray(a, dtype=np.float64)
        if a.shape[0] > max_rows:
            a = resize(a, (max_rows, round(a.shape[1] * max_rows / a.shape[0])), anti_aliasing=True,
                       preserve_range=True)
        tiles.append(np.clip((a - lo) * scale, 0, 255).astype(np.uint8))
    gap = np.full((tiles[0].shape[0], 8), 128, np.uint8)
    canvas = Image.fromarray(np.concatenate([tiles[0], gap, tiles[1]], axis=1))
    draw = ImageDraw.Draw(canvas)
    try:  # a scalable font where Pillow has FreeType, so the labels are readable on large images
        font = ImageFont.load_default(size=max(10, tiles[0].shape[0] // 40))
    except (TypeError, OSError, ImportError):
        font = ImageFont.load_default()
    for x, label in ((4, "before"), (tiles[0].shape[1] + 12, "after")):
        box = draw.textbbox((x + 3, 3), label, font=font)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=0)
        draw.text((x + 3, 3), label, fill=255, font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
