"""The pictures: thick-slice detection, the cropped and labelled demo preview, labelled training grids, and the
evaluation figure that names both baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medsynth.pictures import crop_box, save_grid, thick_slice_note, through_plane_blur, write_volume_preview


def _textured_ball(shape: tuple[int, int, int] = (64, 64, 64), seed: int = 0) -> np.ndarray:
    """A ball of fine isotropic texture (smoothed noise, detail down to about a voxel) on a zero background."""
    from scipy.ndimage import gaussian_filter

    texture = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 0.5)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ball = sum(g**2 for g in grids) < 0.9
    return np.where(ball, 100 + 20 * texture / texture.std(), 0).astype(np.float32)


def _thick(volume: np.ndarray, slices: int, axis: int, how: str) -> np.ndarray:
    """``volume`` as a thick-slice acquisition resampled to its own grid: every ``slices`` slices along ``axis``
    averaged, then duplicated (nearest) or smoothed (a running mean)."""
    from scipy.ndimage import uniform_filter1d

    if how == "smoothed":
        return uniform_filter1d(volume, slices, axis=axis)
    moved = np.moveaxis(volume, axis, 0)
    n = moved.shape[0] // slices * slices
    blocks = moved[:n].reshape(n // slices, slices, *moved.shape[1:]).mean(axis=1)
    return np.moveaxis(np.concatenate([np.repeat(blocks, slices, axis=0), moved[n:]]), 0, axis)


@pytest.mark.parametrize("how", ["duplicated", "smoothed"])
@pytest.mark.parametrize("axis", [0, 2])
def test_thick_slice_detector_flags_a_thick_slice_volume_and_not_an_isotropic_one(how: str, axis: int) -> None:
    iso = _textured_ball()
    assert through_plane_blur(iso)[1] < 1.5
    assert thick_slice_note("input T1", iso, (1.0, 1.0, 1.0)) is None
    thick = _thick(iso, 5, axis, how)
    found, factor = through_plane_blur(thick)
    assert found == axis and 3.0 < factor < 6.0, (found, factor)
    note = thick_slice_note("input T1", thick, (1.0, 1.0, 1.0))
    rows = "coronal and sagittal" if axis == 2 else "axial and coronal"
    assert note is not None and note.startswith("input T1 looks thick-slice (through-plane blur x")
    assert note.endswith(f"along {('R-L', 'A-P', 'S-I')[axis]}): {rows} rows striped")


def test_thick_slices_by_voxel_size_and_the_head_phantom_is_not_thick(head_phantom) -> None:
    volume = head_phantom((40, 44, 36))
    assert thick_slice_note("input T1", volume, (1.0, 1.0, 1.0)) is None
    assert thick_slice_note("input T1", volume, (1.0, 1.0, 5.0)) == (
        "input T1 has thick slices (5.0 mm along S-I, 1.0 mm in-plane): coronal and sagittal rows blocky")


def test_packaged_sample_t1_is_thick_slice_and_its_t2_is_not() -> None:
    import nibabel as nib

    from medsynth.demo import SAMPLE_T1, SAMPLE_T2
    from medsynth.pictures import to_ras

    for path, thick in ((SAMPLE_T1, True), (SAMPLE_T2, False)):
        image = nib.load(path)
        ras, spacing = to_ras(image.get_fdata(dtype=np.float32), image.affine)
        note = thick_slice_note("input", ras, spacing)
        assert (note is not None and "along S-I): coronal and sagittal rows striped" in note) == thick, (path, note)


def test_preview_is_cropped_to_the_foreground_and_labelled(tmp_path: Path, head_phantom) -> None:
    head = head_phantom((30, 36, 24))
    affine = np.diag([2.0, 2.0, 3.0, 1.0])  # RAS already: the box is in the arrays' own axes
    titles = ["input T1 (unseen patient)", "synthetic T2 (three axes fused)", "real T2 (for comparison)"]
    figures = []
    for pad in (4, 30):
        # the same head in a small and in a large field of view
        volumes = [np.pad(head * (1 + k), pad) for k in range(3)]
        figures.append(write_volume_preview(tmp_path / f"pad{pad}.png", list(zip(titles, volumes)), affine,
                                            title="demo", notes=["input T1 looks thick-slice"]))
    small, large = figures
    assert large.columns == titles and large.rows == ["axial", "coronal", "sagittal"]
    assert large.notes[0] == "input T1 looks thick-slice" and "radiological view" in large.notes[-1]
    # the head's box plus 6 mm: 3 voxels of 2 mm, 2 of 3 mm
    inside = np.argwhere(np.pad(head, 30) > 0)
    expected = tuple(slice(int(lo) - m, int(hi) + 1 + m) for lo, hi, m in zip(inside.min(0), inside.max(0), (3, 3, 2)))
    assert large.box == expected
    # the field of view does not matter: the same crop, drawn the same
    assert [b.stop - b.start for b in small.box] == [b.stop - b.start for b in large.box]
    pixels = [np.asarray(PILImage.open(f.path).convert("L")) for f in figures]
    assert pixels[0].shape[::-1] == small.size == large.size and np.array_equal(pixels[0], pixels[1])
    # the head fills its panels: the middle column of the axial row is mostly head, not background
    height, width = pixels[1].shape
    middle = pixels[1][int(height * 0.1):int(height * 0.35), width // 3 + 10: 2 * width // 3 - 10]
    assert (middle > 30).mean() > 0.35


def test_crop_box_keeps_the_margin_inside_the_array() -> None:
    mask = np.zeros((10, 12, 8), bool)
    mask[1:4, 5:11, 3:5] = True
    assert crop_box(mask, (1.0, 2.0, 1.0), 3.0) == (slice(0, 7), slice(3, 12), slice(0, 8))
    assert crop_box(np.zeros((4, 5, 6), bool), (1.0, 1.0, 1.0)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_sample_grid_is_labelled_and_keeps_the_tiles(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rows = [[torch.rand(1, 20, 24) * 2 - 1 for _ in range(3)] for _ in range(4)]
    labels = ["t1 -> t2 (1)", "t1 -> t2 (2)", "t2 -> t1 (1)", "t2 -> t1 (2)"]
    grid = save_grid(tmp_path / "step_0000010.png", rows, columns=["real", "translated", "reconstructed"],
                     row_labels=labels, title="step 10 of 100")
    png = np.asarray(PILImage.open(grid.path))
    assert png.shape[::-1] == grid.size and grid.rows == labels and grid.scale >= 4  # 24 px tiles enlarged
    for row, boxes in zip(rows, grid.tiles):
        for tile, (left, top, right, bottom) in zip(row, boxes):
            shown = png[top:bottom, left:right][::grid.scale, ::grid.scale]
            expected = ((tile[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            # radiological view: x runs right to left, y bottom to top
            assert np.array_equal(shown, np.flipud(expected.T)[:, ::-1])
    first = grid.tiles[0][0]
    assert png[:first[1]].max() == 255 and png[first[1]:, :first[0]].max() == 255  # titles and row labels
    # every column title fits above its tile
    assert all(b[2] - b[0] >= 80 for b in grid.tiles[0])


def test_evaluation_figure_names_and_shows_both_baselines(tmp_path: Path, make_volume) -> None:
    from conftest import write_residual_model

    from medsynth.evaluation import _score_case, _write_figure, evaluate
    from medsynth.inference import fair_baseline_translator

    model = write_residual_model(tmp_path / "model.pt")
    src = make_volume(tmp_path / "src", "case1.nii.gz", shape=(24, 28, 20), contrast="t1")
    ref = make_volume(tmp_path / "ref", "case1.nii.gz", shape=(24, 28, 20), contrast="t2")
    pred = make_volume(tmp_path / "pred", "case1.nii.gz", shape=(24, 28, 20), seed=3, contrast="t2")
    fair = fair_baseline_translator(model)
    row, arrays = _score_case("case1", pred, ref, src, None, None, fair=fair, direction="t1-to-t2")
    figure = _write_figure(row, arrays, tmp_path / "case1.png")
    assert figure.columns == ["source", "prediction", "reference", "|prediction - reference|",
                              "oracle baseline:\nmatched to the real T2", "|oracle - reference|",
                              "fair baseline: matched\nto the training histograms", "|fair - reference|"]
    assert "\noracle baseline (matched to the real T2): PSNR" in figure.title
    assert "\nfair baseline (matched to the training histograms): PSNR" in figure.title
    # through the public API: two more columns (the fair baseline and its error) when the model is named
    sizes = []
    for name, kwargs in (("oracle", {}), ("both", {"model": str(model)})):
        evaluate(str(pred), str(ref), source=str(src), out_dir=tmp_path / name, **kwargs)
        sizes.append(PILImage.open(tmp_path / name / "case1.png").size)
    column = sizes[1][0] - sizes[0][0]
    assert sizes[0][1] == sizes[1][1] and 2 * 200 < column < 2 * 300, sizes
