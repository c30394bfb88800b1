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
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medsynth.files import atomic_path, write_atomic

__all__ = [
    "Figure",
    "Grid",
    "View",
    "crop_box",
    "foreground",
    "radiological_views",
    "save_grid",
    "thick_slice_note",
    "through_plane_blur",
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


#: RAS axis letters and the views that show an axis in their plane (a blurred axis stripes those rows)
AXIS_LETTERS = ("R-L", "A-P", "S-I")
VIEWS_WITH_AXIS = (("axial", "coronal"), ("axial", "sagittal"), ("coronal", "sagittal"))


def foreground(volume: np.ndarray) -> np.ndarray:
    """Voxels that are not background, for display: above a constant fill (0 or the minimum, when it covers at
    least 10% of the voxels: skull-stripped or masked images), else above the Otsu threshold."""
    lowest = float(np.min(volume))
    for fill in (0.0, lowest):
        if np.count_nonzero(volume == fill) >= 0.1 * volume.size:
            return volume > fill
    # scikit-image: ~0.3 s to import, only for images without a constant background
    from skimage.filters import threshold_otsu

    return volume > threshold_otsu(volume)


def crop_box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = 6.0) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin_mm`` on every side (within the array); the whole array
    when the mask is empty."""
    hits = np.nonzero(mask)
    if not len(hits[0]):
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis, n in enumerate(mask.shape):
        margin = int(math.ceil(margin_mm / float(spacing[axis])))
        box.append(slice(max(int(hits[axis].min()) - margin, 0), min(int(hits[axis].max()) + 1 + margin, n)))
    return tuple(box)


def through_plane_blur(volume: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, float]:
    """The axis whose detail is most blurred compared with the other two, and by how much (1 = as sharp).

    A thick-slice acquisition resampled to small voxels keeps no detail finer than its slices along the slice
    axis, whatever its voxel size. The measure: power spectra of lines of voxels through the foreground along
    each axis (Hann window, same length for all axes); the frequency at which an axis's spectrum falls to a
    quarter (-6 dB) of the other two axes' mean is where a box blur (a slice) of width ``0.6 / frequency``
    voxels falls to a quarter, so that width is the blur factor. Detail is compared with the image's own
    in-plane detail, so noise and contrast cancel out.

    Args:
        volume: (I, J, K) voxels; fewer than 16 voxels along an axis (or a 2D image) gives ``(2, 1.0)``.
        mask: the foreground (default: :func:`foreground`).

    Returns:
        (axis of ``volume``, blur factor >= 1).
    """
    volume = np.asarray(volume, dtype=np.float32)
    mask = foreground(volume) if mask is None else np.asarray(mask, bool)
    box = crop_box(mask, (1.0, 1.0, 1.0), 0.0)
    volume, mask = volume[box], mask[box]
    # lines of one length for all axes, long enough for a spectrum, short enough to lie inside the foreground
    length = min(64, min(volume.shape) // 2) // 2 * 2
    if volume.ndim != 3 or length < 16:
        return 2, 1.0
    spectra = []
    for axis in range(3):
        n = volume.shape[axis]
        start = (n - length) // 2
        lines = np.moveaxis(volume, axis, -1)[..., start:start + length].reshape(-1, length)
        inside = np.moveaxis(mask, axis, -1)[..., start:start + length].reshape(-1, length).all(axis=1)
        if inside.sum() < 16:
            return 2, 1.0
        lines = lines[inside]
        lines = lines - lines.mean(axis=1, keepdims=True)
        power = (np.abs(np.fft.rfft(lines * np.hanning(length), axis=1)) ** 2).mean(axis=0)
        # blur leaves coarse structure alone: compare the axes with their low frequencies equal
        low = power[1:max(3, length // 10)].mean()
        spectra.append(power / max(low, 1e-12))
    factors = []
    for axis in range(3):
        others = np.mean([spectra[o] for o in range(3) if o != axis], axis=0)
        ratio = np.convolve(spectra[axis] / np.maximum(others, 1e-12), np.ones(3) / 3, mode="same")
        below = np.nonzero(ratio[2:-1] < 0.25)[0]
        if not len(below):
            factors.append(1.0)
            continue
        # the crossing between two frequency bins, interpolated in decibels
        i = int(below[0]) + 2
        before, after = np.log(max(ratio[i - 1], 1e-12)), np.log(max(ratio[i], 1e-12))
        crossing = i - 1 + (before - np.log(0.25)) / max(before - after, 1e-12)
        factors.append(max(1.0, 0.6 * length / crossing))
    axis = int(np.argmax(factors))
    return axis, float(factors[axis])


def thick_slice_note(name: str, volume: np.ndarray, spacing: Sequence[float], threshold: float = 2.0,
                     blur_threshold: float = 2.5) -> str | None:
    """A footnote when a RAS volume is thick-slice: by its voxel sizes (one axis ``threshold`` times coarser than
    the finest), or by a measured through-plane blur (:func:`through_plane_blur`, at least ``blur_threshold``)
    when the voxels are small but the slices were not; None when it is not. (Measured blur: 5.1-6.1 on the BraTS,
    TCGA and AURORA T1s and T2s resampled to 1 mm except one, the packaged sample's T2, at 2.1; 1.0 on 2 mm IXI T1s
    and MNI templates.)

    Example: ``"input T1 looks thick-slice (through-plane blur x4.8 along S-I): coronal and sagittal rows
    striped"``.
    """
    spacing = np.asarray(spacing, dtype=float)
    if volume.ndim != 3 or min(volume.shape) < 2:
        return None
    coarse = int(np.argmax(spacing))
    if spacing[coarse] >= threshold * spacing.min():
        rows = " and ".join(VIEWS_WITH_AXIS[coarse])
        return (f"{name} has thick slices ({spacing[coarse]:.1f} mm along {AXIS_LETTERS[coarse]}, "
                f"{spacing.min():.1f} mm in-plane): {rows} rows blocky")
    axis, factor = through_plane_blur(volume)
    if factor < blur_threshold:
        return None
    rows = " and ".join(VIEWS_WITH_AXIS[axis])
    return (f"{name} looks thick-slice (through-plane blur x{factor:.1f} along {AXIS_LETTERS[axis]}): "
            f"{rows} rows striped")


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


@dataclass
class Grid:
    """What :func:`save_grid` drew: the PNG, its labels, where the tiles are and how much they were enlarged."""

    path: Path
    title: str
    columns: list[str]
    rows: list[str]
    #: (left, top, right, bottom) of each tile in the PNG, row by row
    tiles: list[list[tuple[int, int, int, int]]]
    #: integer enlargement of the tiles (small slices are enlarged so the labels fit)
    scale: int
    #: (width, height) of the PNG in pixels
    size: tuple[int, int]


def _font(size: int) -> Any:
    """Pillow's scalable default font where it has FreeType, else its bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def save_grid(path: Path, rows: Sequence[Sequence[Any]], columns: Sequence[str] = (), row_labels: Sequence[str] = (),
              title: str = "", min_tile: int = 96) -> Grid:
    """Write a labelled PNG grid of [-1, 1] images (rows of equal-size tiles, 2 px gaps), atomically.

    Args:
        path: the PNG to write.
        rows: rows of torch tensors, each a (x, y) slice in RAS order (singleton dimensions are squeezed);
            shown in radiological view: anterior (or superior) up, the patient's right on the left.
        columns: column titles, drawn above the tiles.
        row_labels: row labels, drawn left of the tiles.
        title: a line above the column titles.
        min_tile: tiles smaller than this (pixels) are enlarged by a whole factor (nearest neighbour), so that
            the labels fit above them and each voxel stays a visible block.

    Returns:
        The :class:`Grid`: labels, tile boxes and size.
    """
    tiles = [[((t.detach().float().cpu().squeeze().clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for t in row]
             for row in rows]
    font = _font(13)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        box = probe.textbbox((0, 0), text, font=font)
        return box[2] - box[0], box[3] - box[1]

    w, h = tiles[0][0].shape  # shown transposed below
    # a tile at least min_tile pixels, and wider than its column's title
    widest = max([text_size(t)[0] + 10 for t in columns] + [0])
    scale = max(1, math.ceil(min_tile / max(w, h)), math.ceil(widest / w))
    tw, th = w * scale, h * scale
    gap = 2
    n_cols = max(len(r) for r in tiles)
    line = text_size("Ag")[1] + 8
    left = max([text_size(t)[0] for t in row_labels] + [0]) + 12 if row_labels else 0
    top = line * (bool(title) + bool(columns))
    canvas = Image.new("L", (left + n_cols * (tw + gap) - gap, top + len(tiles) * (th + gap) - gap), 0)
    # grey gaps: the tiles' black background would otherwise run into the next tile's
    ImageDraw.Draw(canvas).rectangle((left, top, canvas.size[0] - 1, canvas.size[1] - 1), fill=96)
    boxes = []
    for i, row in enumerate(tiles):
        boxes.append([])
        for j, tile in enumerate(row):
            # slices are (x, y) in RAS order: transposed and flipped so that anterior (or superior) is up and the
            # patient's right is on the left, the radiological view of medsynth-eval's figures and of Slicer
            shown = np.flipud(tile.T)[:, ::-1]
            x, y = left + j * (tw + gap), top + i * (th + gap)
            canvas.paste(Image.fromarray(np.ascontiguousarray(shown)).resize((tw, th), Image.NEAREST), (x, y))
            boxes[-1].append((x, y, x + tw, y + th))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title, fill=255, font=font)
    for j, name in enumerate(columns):
        width = text_size(name)[0]
        draw.text((left + j * (tw + gap) + max((tw - width) // 2, 0), top - line + 3), name, fill=255, font=font)
    for i, name in enumerate(row_labels):
        draw.text((6, top + i * (th + gap) + (th - text_size(name)[1]) // 2), name, fill=255, font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Grid(Path(path), title, list(columns), list(row_labels), boxes, scale, canvas.size)


# --------------------------------------------------------------------------------------------- evaluation


def write_case_figure(path: Path, panels: Sequence[tuple[str, np.ndarray, str]], mask: np.ndarray,
                      affine: np.ndarray, title: str) -> Figure:
    """PNG of one evaluated case: rows axial/coronal/sagittal through the mask centre (cropped to the mask's box),
    one column per panel.

    Args:
        path: the PNG to write (atomically).
        panels: (column title, image normalised to [0, 1], colour map) triples; ``"gray"`` images are shown on
            0-1, ``"inferno"`` panels are absolute errors, shown on 0-0.5 with one shared colour bar.
        mask: the evaluation mask, (I, J, K) or (I, J) like the panels; its centre picks the slices.
        affine: voxel-to-RAS of the arrays.
        title: figure title (the case and its metrics).

    Returns:
        The :class:`Figure`: the titles as drawn, the crop and the size of the PNG.
    """
    plt = _pyplot()
    if mask.ndim == 2:
        mask = mask[..., None]
        panels = [(t, a[..., None] if a.ndim == 2 else a, c) for t, a, c in panels]
    mask_ras, spacing = to_ras(mask.astype(np.float32), affine)
    # the mask's box (plus a margin) fills the panels
    box = crop_box(mask_ras > 0, spacing)
    mask_ras = mask_ras[box]
    centre = [int(round(c)) for c in np.argwhere(mask_ras > 0).mean(axis=0)]
    views = [radiological_views(to_ras(p[1], affine)[0][box], centre) for p in panels]
    n_rows, n_cols = len(views[0]), len(panels)
    heights = _row_heights(views[0], spacing)
    fig = plt.figure(figsize=(2.3 * n_cols + 0.7, 2.3 * sum(heights) + 0.3 * n_rows + 0.9))
    # A narrow last column holds one colour bar: every error panel uses the same 0-0.5 scale.
    grid = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[1.0] * n_cols + [0.05], height_ratios=heights)
    error_image = None
    drawn_columns, drawn_rows = [], []
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
                drawn_columns.append(ax.get_title())
            if c == 0:
                ax.set_ylabel(view, fontsize=9)
                drawn_rows.append(ax.get_ylabel())
    if error_image is not None:
        cbar = fig.colorbar(error_image, cax=fig.add_subplot(grid[:, -1]))
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("absolute error (normalised)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    shown = "as stored" if mask.shape[2] == 1 else "radiological view"
    note = f"intensities normalised to [0, 1] in the mask; errors on 0-0.5; {shown}"
    fig.text(0.5, 0.005, note, ha="center", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = buf.getvalue()
    size = Image.open(_stdio.BytesIO(png)).size
    return Figure(write_atomic(path, png), title, drawn_columns, drawn_rows, [note], box, size)


# --------------------------------------------------------------------------------------------- demo


@dataclass
class Figure:
    """What :func:`write_volume_preview` or :func:`write_case_figure` drew: the PNG, its titles as drawn, the crop
    and its size."""

    path: Path
    title: str
    #: column titles, left to right
    columns: list[str]
    #: row labels (views), top to bottom
    rows: list[str]
    #: footnotes under the panels
    notes: list[str]
    #: the crop of the RAS volumes that the panels show
    box: tuple[slice, ...]
    #: (width, height) of the PNG in pixels
    size: tuple[int, int]


def write_volume_preview(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], affine: np.ndarray,
                         title: str = "", notes: Sequence[str] = (), margin_mm: float = 6.0) -> Figure:
    """PNG of several co-registered volumes side by side, one column each, axial/coronal/sagittal rows through
    the centre of the foreground, in radiological view, cropped to the foreground of the first volume (plus
    ``margin_mm``; the same box for every column) so the anatomy fills the panels; each volume scaled by its own
    0.5-99.5 percentiles.

    Args:
        path: the PNG to write (atomically).
        panels: (column title, (I, J, K) array) pairs sharing ``affine``.
        affine: voxel-to-RAS of the arrays.
        title: figure title.
        notes: footnotes (e.g. :func:`thick_slice_note`), one line each, above the standing one that says how
            the panels are shown.
        margin_mm: space kept around the foreground.

    Returns:
        The :class:`Figure`: the titles as drawn, the crop and the size of the PNG.
    """
    plt = _pyplot()
    first, spacing = to_ras(np.asarray(panels[0][1], np.float32), affine)
    mask = foreground(first)
    box = crop_box(mask, spacing, margin_mm)
    mask = mask[box]
    fg = np.argwhere(mask)
    centre = [int(round(c)) for c in (fg.mean(axis=0) if len(fg) else np.array(mask.shape) / 2)]
    columns = []
    for name, array in panels:
        ras = to_ras(np.asarray(array, np.float32), affine)[0][box]
        inside = ras > ras.min()
        lo, hi = np.percentile(ras[inside] if inside.any() else ras, [0.5, 99.5])
        columns.append((name, np.clip((ras - lo) / max(hi - lo, 1e-6), 0, 1)))
    views = [radiological_views(c[1], centre) for c in columns]
    heights = _row_heights(views[0], spacing)
    notes = list(notes) + ["radiological view (the patient's right on the left); each column scaled to its own "
                           "0.5-99.5 percentiles"]
    width = 2.6 * len(columns) + 0.3
    # a note wider than the figure is wrapped (about 0.55 em per character at 8.5 pt), not cut at its edges
    # (line, whether it belongs to one of the notes that matter: all but the last, the reading guide)
    lines = [(line, i < len(notes) - 1) for i, note in enumerate(notes)
             for line in textwrap.wrap(note, max(40, int(width * 72 / (8.5 * 0.55))))]
    foot = 0.2 * len(lines) + 0.1
    fig = plt.figure(figsize=(width, 2.6 * sum(heights) + 0.6 + foot), facecolor="black")
    grid = fig.add_gridspec(len(views[0]), len(columns), height_ratios=heights)
    drawn_columns, drawn_rows = [], []
    for c, ((name, _), column) in enumerate(zip(columns, views)):
        for r, (view, sl, h_axis, v_axis, origin) in enumerate(column):
            ax = fig.add_subplot(grid[r, c])
            ax.set_facecolor("black")
            ax.imshow(sl, cmap="gray", vmin=0, vmax=1, origin=origin, interpolation="nearest",
                      aspect=float(spacing[v_axis] / spacing[h_axis]))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(name, color="white", fontsize=10)
                drawn_columns.append(ax.get_title())
            if c == 0:
                ax.set_ylabel(view, color="white", fontsize=10)
                drawn_rows.append(ax.get_ylabel())
    height = fig.get_figheight()
    for i, (line, matters) in enumerate(lines):
        # the first notes are the ones that matter: brighter, and nearer the panels
        fig.text(0.5, (foot - 0.2 * (i + 0.5) - 0.05) / height, line, ha="center", va="center",
                 fontsize=8.5 if matters else 7.5, color="#ffd27f" if matters else "0.65")
    fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, foot / height, 1, 1))
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="black")
    plt.close(fig)
    png = buf.getvalue()
    size = Image.open(_stdio.BytesIO(png)).size
    return Figure(write_atomic(path, png), title, drawn_columns, drawn_rows, notes, box, size)


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
