"""medsynth.io: finding inputs, validated reading, atomic writing with the input's geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsynth.errors import InputError
from medsynth.io import check_output, find_files, load_image, natural_key, save_like, stem_of, suffix_of


def test_suffixes_and_natural_sort() -> None:
    assert suffix_of("a/b/sub.nii.gz") == ".nii.gz" and stem_of("a/b/sub.nii.gz") == "sub"
    assert suffix_of("x.NRRD") == ".nrrd"
    names = ["CT_PNG (10).png", "CT_PNG (2).png", "CT_PNG (1).png"]
    assert sorted(names, key=natural_key) == ["CT_PNG (1).png", "CT_PNG (2).png", "CT_PNG (10).png"]


def test_find_files_folder_glob_and_files(tmp_path: Path, make_volume) -> None:
    a = make_volume(tmp_path / "d" / "s1", "t1.nii.gz")
    b = make_volume(tmp_path / "d" / "s2", "t1.nii.gz")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    assert find_files([tmp_path / "d"], what="volume") == [a, b]
    assert find_files([str(tmp_path / "d" / "*" / "t1.nii.gz")]) == [a, b]
    assert find_files([a, a, b]) == [a, b]
    with pytest.raises(InputError, match="no such file or folder"):
        find_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no volumes found"):
        find_files([tmp_path / "empty"], what="volume")
    with pytest.raises(InputError, match="matches no file"):
        find_files([str(tmp_path / "*.mha")])


def test_load_applies_scaling_and_squeezes_singleton_frames(tmp_path: Path) -> None:
    data = (np.arange(6 * 7 * 5).reshape(6, 7, 5) % 50).astype(np.int16)
    img = nib.Nifti1Image(data[..., None], np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    loaded = load_image(tmp_path / "scaled.nii.gz")
    assert loaded.array.shape == (6, 7, 5) and loaded.array.dtype == np.float32
    np.testing.assert_allclose(loaded.array, data * 0.5 + 10.0)
    assert loaded.dtype == np.int16


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("nan.nii.gz", np.where(np.eye(6)[:, :, None] > 0, np.nan, 1.0) * np.ones((6, 6, 4)), "NaN or Inf"),
        ("zero.nii.gz", np.zeros((6, 6, 4)), "all voxels are zero"),
        ("const.nii.gz", np.full((6, 6, 4), 3.0), "same value"),
        ("frames.nii.gz", np.random.default_rng(0).random((6, 6, 4, 3)), "3 frames"),
        ("flat.nii.gz", np.random.default_rng(0).random((6, 6, 1)), "2D image"),
    ],
)
def test_bad_volumes_are_refused(tmp_path: Path, name: str, data: np.ndarray, problem: str) -> None:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), tmp_path / name)
    with pytest.raises(InputError, match=problem) as info:
        load_image(tmp_path / name, expect="volume")
    assert str(info.value).startswith(str(tmp_path / name))


def test_corrupt_and_foreign_files(tmp_path: Path, make_volume) -> None:
    good = make_volume(tmp_path, "good.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot read as NIfTI"):
        load_image(broken)
    text = tmp_path / "notes.nii"
    text.write_text("hello")
    with pytest.raises(InputError, match="cannot read as NIfTI"):
        load_image(text)
    other = tmp_path / "table.csv"
    other.write_text("a,b")
    with pytest.raises(InputError, match="not a supported image file"):
        load_image(other)
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.nii.gz")


def test_itk_formats_give_the_same_voxels_and_ras_affine(tmp_path: Path, make_volume) -> None:
    affine = np.array([[0, -1.5, 0, 20], [0, 0, 2.0, -10], [-1.2, 0, 0, 5], [0, 0, 0, 1]])
    path = make_volume(tmp_path, "v.nii.gz", shape=(9, 10, 7), affine=affine)
    ref = load_image(path)
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(tmp_path / f"v{suffix}"))
        other = load_image(tmp_path / f"v{suffix}")
        np.testing.assert_allclose(other.affine, ref.affine, atol=1e-5)
        np.testing.assert_array_equal(other.array, ref.array)


def test_save_like_keeps_the_header_and_is_atomic(tmp_path: Path, make_volume) -> None:
    affine = np.array([[0.9, 0.1, 0, -30], [-0.1, 0.9, 0, 12], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    path = make_volume(tmp_path, "in.nii.gz", shape=(8, 9, 5), affine=affine)
    src = nib.load(path)
    image = load_image(path)
    out = save_like(image, image.array * 2, tmp_path / "out" / "res.nii.gz")
    res = nib.load(out)
    assert res.shape == src.shape and res.get_data_dtype() == np.float32
    np.testing.assert_array_equal(res.header.get_sform(), src.header.get_sform())
    np.testing.assert_array_equal(res.header.get_qform(), src.header.get_qform())
    assert res.header["sform_code"] == src.header["sform_code"] and res.header["qform_code"] == src.header["qform_code"]
    np.testing.assert_allclose(res.get_fdata(), image.array * 2)
    assert [p.name for p in out.parent.iterdir()] == ["res.nii.gz"]  # no temporary left behind
    with pytest.raises(InputError, match="exists"):
        save_like(image, image.array, out)
    with pytest.raises(InputError, match="overwrite the input"):
        save_like(image, image.array, path, overwrite=True)
    assert nib.load(path).get_fdata().max() == pytest.approx(image.array.max())


def test_save_like_input_dtype_rounds_and_clips(tmp_path: Path, make_volume) -> None:
    path = make_volume(tmp_path, "in.nii.gz", shape=(6, 6, 4), dtype=np.int16)
    image = load_image(path)
    values = image.array.copy()
    values[0, 0, 0] = 1e6
    out = nib.load(save_like(image, values, tmp_path / "o.nii.gz", dtype="input"))
    assert out.get_data_dtype() == np.int16
    data = np.asanyarray(out.dataobj)
    assert data[0, 0, 0] == 32767


def test_check_output_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="folder"):
        check_output(tmp_path / "dir", overwrite=True)


def test_check_output_says_one_thing_about_a_folder_whatever_overwrite_says(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    messages = set()
    for overwrite in (False, True):
        with pytest.raises(InputError) as caught:
            check_output(tmp_path / "dir", [tmp_path / "t1.nii.gz"], overwrite=overwrite)
        messages.add(str(caught.value))
    assert messages == {f"{tmp_path / 'dir'}: the output is a folder; give a file name, e.g. "
                        f"{tmp_path / 'dir' / 't1.nii.gz'}"}


def test_check_output_refuses_a_name_without_extension_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no file extension"):
        check_output(tmp_path / "new" / "result", [tmp_path / "t1.nii.gz"])
    with pytest.raises(InputError, match="cannot write this format"):
        check_output(tmp_path / "result.xyz", [tmp_path / "t1.nii.gz"])
    assert list(tmp_path.iterdir()) == []
    # beside a DICOM export without a suffix, a name without one keeps its format
    assert check_output(tmp_path / "IM0002", [tmp_path / "IM0001"]) == tmp_path / "IM0002"


def test_kinds_of_inputs_and_a_mix_is_refused_naming_the_odd_file(tmp_path: Path, make_volume) -> None:
    from PIL import Image as PILImage

    from medsynth.io import kind_of, kind_of_inputs

    vols = [make_volume(tmp_path, f"v{i}.nii.gz", shape=(6, 6, 4)) for i in range(2)]
    png = tmp_path / "slice.png"
    PILImage.fromarray(np.full((6, 6), 100, np.uint8)).save(png)
    assert (kind_of(vols[0]), kind_of(png), kind_of(tmp_path / "a.mha")) == ("volume", "image2d", "volume")
    assert kind_of_inputs(vols) == "volume" and kind_of_inputs([png]) == "image2d"
    with pytest.raises(InputError) as caught:
        kind_of_inputs([png, *vols])
    assert caught.value.path == str(png) and "2 other inputs are 3D volumes" in caught.value.problem


def test_save_like_staging_leaves_nothing_on_a_failed_write(tmp_path: Path, make_volume) -> None:
    image = load_image(make_volume(tmp_path, "in.nii.gz", shape=(6, 6, 4)))
    with pytest.raises(InputError, match="2D image"):
        save_like(image, image.array, tmp_path / "out" / "a.png")  # a volume cannot become a PNG
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="2D image"):
        check_output(tmp_path / "out" / "a.png", [image.path])  # and a converter refuses it before any work
