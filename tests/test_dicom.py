"""medsynth.dicom: a DICOM series in as one volume (classic and enhanced), a translation out as a new series.

Synthetic series are written here with pydicom (oblique, rescaled, files named out of order; an enhanced file
whose frames run against the orientation's normal); the real scanner series in ``../shared/data/dicom_mr`` are
used when present. Every geometry is checked against SimpleITK's own reading of the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsynth.cli.convert import main as convert_main
from medsynth.dicom import (MR_IMAGE_STORAGE, is_series_folder, quantise, series_description,
                            write_series)
from medsynth.errors import InputError
from medsynth.io import find_files, itk_affine, kind_of, load_image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence as DicomSequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid  # noqa: E402

SHAPE = (12, 10, 8)  # I (columns), J (rows), K (slices)
STUDY = "1.2.826.0.1.3680043.8.498.1001"
FRAME = "1.2.826.0.1.3680043.8.498.1002"
SHARED = {"philips_mprage_sag": (256, 256, 170), "siemens_t1_sag_hfdr": (256, 256, 35),
          "siemens_xa30_enh_t1": (128, 128, 96)}


def oblique(deg: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column cosines turned about two axes."""
    a, b = np.radians(deg), np.radians(deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = rz @ rx
    return m[:, 0], m[:, 1]


def stored_volume(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """uint16 voxels (I, J, K) with a pattern that shows any flip or transpose, and a zero background."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    vol = 100 + 7 * i + 3 * j * j + 50 * k
    vol[0, 0, :] = 0
    return vol.astype(np.uint16)


def _base(series_uid: str, description: str, sop_class: str = MR_IMAGE_STORAGE) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PH-7", "19800101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = STUDY, "20240101", "120000", "7"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "A1", "", "phantom study"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = FRAME, ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, 3
    ds.SeriesDescription, ds.PatientPosition = description, "HFS"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def write_classic(folder: Path, stored: np.ndarray | None = None, row=None, col=None, spacing=(0.9, 1.1),
                  step: float = 2.5, origin=(-30.0, 20.0, 15.0), slope: float = 0.5, intercept: float = -10.0,
                  series_uid: str | None = None, description: str = "t1 phantom",
                  positions: list[np.ndarray] | None = None) -> dict:
    """Classic one-slice MR files, named so that name order is not slice order; returns what was written."""
    stored = stored_volume() if stored is None else stored
    if row is None:
        row, col = oblique()
    normal = np.cross(row, col)
    series_uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    n = stored.shape[2]
    if positions is None:
        positions = [np.asarray(origin) + k * step * normal for k in range(n)]
    for k in range(n):
        ds = _base(series_uid, description)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
        ds.SliceThickness = str(step)
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<u2").tobytes()
        # reversed, unpadded numbers in the names: neither name nor write order is the slice order
        ds.save_as(folder / f"IM{(7 * (n - k)) % 31}_{k}.dcm", enforce_file_format=True)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = row * spacing[1], col * spacing[0]
    affine[:3, 2], affine[:3, 3] = (positions[-1] - positions[0]) / (n - 1), positions[0]
    return {"uid": series_uid, "array": stored * slope + intercept,
            "affine": np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine}


def write_enhanced(path: Path, stored: np.ndarray | None = None, step: float = 3.0) -> dict:
    """An Enhanced MR file whose frames run against the orientation's normal (left-handed), with per-frame
    rescale slopes; returns the expected (I, J, K) values and voxel-to-RAS affine in frame order."""
    stored = stored_volume() if stored is None else stored
    row, col = oblique(-15.0)
    normal = np.cross(row, col)
    origin = np.array([40.0, -12.0, 7.0])
    ds = _base(generate_uid(), "enhanced phantom", "1.2.840.10008.5.1.4.1.1.4.1")
    n = stored.shape[2]
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = ["1.5", "1.25"], str(step)
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = DicomSequence([orient]), DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames, slopes = [], []
    for k in range(n):
        item, plane, value = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in origin - k * step * normal]
        slopes.append(1.0 + 0.25 * k)
        value.RescaleSlope, value.RescaleIntercept, value.RescaleType = str(slopes[-1]), "5", "US"
        item.PlanePositionSequence = DicomSequence([plane])
        item.PixelValueTransformationSequence = DicomSequence([value])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.ascontiguousarray(stored.transpose(2, 1, 0)).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * 1.25, col * 1.5, -step * normal, origin
    return {"array": stored * np.asarray(slopes) + 5.0, "affine": np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine}


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def sitk_source(path: Path) -> sitk.Image:
    """How SimpleITK reads a source: an enhanced file with ReadImage (its series reader makes it 4-D)."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix == ".dcm") if Path(path).is_dir() else [Path(path)]
    return sitk.ReadImage(str(files[0])) if len(files) == 1 else sitk_series(Path(path))


def sitk_geometry_gap(a: sitk.Image, b: sitk.Image) -> float:
    """The largest difference, in mm, between the two grids' voxel centres at the corners."""
    corners = [(i, j, k) for i in (0, a.GetSize()[0] - 1) for j in (0, a.GetSize()[1] - 1)
               for k in (0, a.GetSize()[2] - 1)]
    return max(float(np.linalg.norm(np.subtract(a.TransformContinuousIndexToPhysicalPoint(c),
                                                b.TransformContinuousIndexToPhysicalPoint(c)))) for c in corners)


# ---- reading ---------------------------------------------------------------------------------------------------
def test_classic_series_reads_as_one_volume_with_its_geometry(tmp_path: Path) -> None:
    truth = write_classic(tmp_path / "s")
    image = load_image(tmp_path / "s", expect="volume")
    assert image.format == "dicom" and image.array.shape == SHAPE and image.dtype == np.int16  # -10 + 0.5 x 12 bits
    np.testing.assert_allclose(image.affine, truth["affine"], atol=1e-5)
    np.testing.assert_allclose(image.array, truth["array"], atol=1e-4)  # the rescale applied
    ref = sitk_series(tmp_path / "s")
    np.testing.assert_allclose(image.affine, itk_affine(ref), atol=1e-4)
    np.testing.assert_allclose(image.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0), atol=1e-4)


def test_files_named_by_their_uid_are_read(tmp_path: Path) -> None:
    """PACS exports often name each file by its SOP Instance UID, whose last digits look like a suffix."""
    truth = write_classic(tmp_path / "s")
    for i, f in enumerate(sorted((tmp_path / "s").iterdir())):
        f.rename(f.with_name(f"1.3.12.2.1107.5.2.{i + 17}"))
    image = load_image(tmp_path / "s", expect="volume")
    assert image.array.shape == SHAPE
    np.testing.assert_allclose(image.affine, truth["affine"], atol=1e-5)


def test_enhanced_file_keeps_its_left_handed_frame_order(tmp_path: Path) -> None:
    truth = write_enhanced(tmp_path / "e" / "enh.dcm")
    for given in (tmp_path / "e" / "enh.dcm", tmp_path / "e"):  # the file, or its folder
        image = load_image(given, expect="volume")
        assert image.format == "dicom" and image.native.enhanced
        assert np.linalg.det(image.affine[:3, :3]) < 0
        np.testing.assert_allclose(image.affine, truth["affine"], atol=1e-5)
        np.testing.assert_allclose(image.array, truth["array"], atol=1e-4)  # per-frame slopes
    ref = sitk.ReadImage(str(tmp_path / "e" / "enh.dcm"))
    np.testing.assert_allclose(image.affine, itk_affine(ref), atol=1e-4)
    assert kind_of(tmp_path / "e" / "enh.dcm") == "volume" and kind_of(tmp_path / "e") == "volume"


def test_several_series_ask_which_and_never_mix(tmp_path: Path) -> None:
    a = write_classic(tmp_path / "s", description="first")
    b = write_classic(tmp_path / "s", stored=stored_volume((12, 10, 5)), description="second", step=4.0)
    with pytest.raises(InputError, match="holds 2 DICOM series; choose one with --series UID") as info:
        load_image(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message and a["uid"] in message and b["uid"] in message
    assert '"first" (8 slices)' in message and '"second" (5 slices)' in message
    image = load_image(tmp_path / "s", series=b["uid"])
    assert image.array.shape == (12, 10, 5)
    np.testing.assert_allclose(image.affine, b["affine"], atol=1e-5)
    with pytest.raises(InputError, match="no series 1.2.3 here"):
        load_image(tmp_path / "s", series="1.2.3")


def _drop(folder: Path, k: int) -> None:
    next(folder.glob(f"IM*_{k}.dcm")).unlink()


@pytest.mark.parametrize("case, message", [
    ("gap", r"missing slices: a step of 5 mm .* where the others are 2.5 mm \(1 slice\(s\) absent\)"),
    ("uneven", "uneven slice spacing"),
    ("orientation", "slices of different orientations"),
    ("size", "slices of different sizes"),
    ("spacing", "pixel spacing .* differs"),
    ("corrupt", "not a readable DICOM file"),
    ("truncated", "cannot decode the DICOM pixel data"),
    ("duplicate", "slices share positions"),
    ("sheared", "sheared by"),
])
def test_broken_series_get_one_error_line(tmp_path: Path, case: str, message: str, capsys) -> None:
    folder = tmp_path / "s"
    row, col = oblique()
    normal = np.cross(row, col)
    positions = [np.array([-30.0, 20.0, 15.0]) + k * 2.5 * normal for k in range(SHAPE[2])]
    if case == "uneven":
        positions[4] = positions[4] + 0.6 * normal
    if case == "duplicate":
        positions[5] = positions[4]
    if case == "sheared":
        positions = [p + k * 0.4 * row for k, p in enumerate(positions)]
    truth = write_classic(folder, positions=positions)
    if case == "gap":
        _drop(folder, 3)
    if case in ("orientation", "size", "spacing"):
        path = next(folder.glob("IM*_2.dcm"))
        ds = pydicom.dcmread(path)
        if case == "orientation":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        elif case == "size":
            ds.Rows = ds.Rows - 1
        else:
            ds.PixelSpacing = [1.0, 1.0]
        ds.save_as(path)
    if case == "corrupt":
        (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(40))
    if case == "truncated":
        path = next(folder.glob("IM*_2.dcm"))
        path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(InputError, match=message):
        load_image(folder)
    # the same through the command, before any model is loaded: one line, status 2
    assert truth["uid"]
    status = convert_main([str(folder), str(tmp_path / "out.nii.gz"), "--model", str(tmp_path / "no_model.pt"),
                           "--progress", "none"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith(f"error: {folder}") and err.strip()[-20:] in \
        f"{err}" and not err.startswith(f"error: {tmp_path / 'no_model.pt'}")


def test_find_files_takes_a_series_folder_as_one_input(tmp_path: Path, make_volume) -> None:
    write_classic(tmp_path / "data" / "case1" / "t1_series")
    write_enhanced(tmp_path / "data" / "case2" / "enh" / "one.dcm")
    nifti = make_volume(tmp_path / "data" / "case3", "t1.nii.gz")
    # single 2-D DICOM pictures without positions (X-rays) stay files
    xray = _base(generate_uid(), "xray", "1.2.840.10008.5.1.4.1.1.1")
    xray.Rows, xray.Columns, xray.PixelData = 4, 4, np.zeros((4, 4), "<u2").tobytes()
    (tmp_path / "data" / "xr").mkdir()
    xray.save_as(tmp_path / "data" / "xr" / "a.dcm", enforce_file_format=True)
    found = find_files([tmp_path / "data"])
    assert found == [tmp_path / "data" / "case1" / "t1_series", tmp_path / "data" / "case2" / "enh", nifti,
                     tmp_path / "data" / "xr" / "a.dcm"]
    assert find_files([tmp_path / "data"], what="volume") == found[:3]
    assert find_files([tmp_path / "data" / "case1" / "t1_series"]) == [tmp_path / "data" / "case1" / "t1_series"]
    assert [kind_of(p) for p in found] == ["volume", "volume", "volume", "image2d"]
    assert not is_series_folder(tmp_path / "data" / "xr") and not is_series_folder(tmp_path / "data")
    with pytest.raises(InputError, match="is a folder, not an image file"):
        load_image(tmp_path / "data")


# ---- writing -------------------------------------------------------------------------------------------------
def test_quantise_covers_the_range_within_half_a_step() -> None:
    values = np.random.default_rng(0).normal(300, 200, (9, 7, 5)).astype(np.float32)
    stored, slope, intercept = quantise(values)
    assert stored.dtype == np.uint16 and stored.min() == 0 and stored.max() >= 65534
    assert np.abs(stored * slope + intercept - values).max() <= slope / 2 * 1.001 + 1e-6
    assert len(series_description("x" * 80, "t2", "default_t1t2")) <= 64
    assert series_description("ADNI_Sag3D MPRAGE", "t2", "default_t1t2") == \
        "synthetic T2 from ADNI_Sag3D MPRAGE (medsynth default_t1t2)"


def check_written(out: Path, source: Path, expected: np.ndarray, source_uid: str, source_header=None) -> dict:
    """Everything a PACS and Slicer rely on in a written series; returns the figures for the report."""
    from pydicom import config

    files = sorted(out.iterdir())
    assert all(f.suffix == ".dcm" for f in files) and len(files) == expected.shape[2]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no staging left
    src = sitk_source(source)
    back = sitk_series(out)
    gap = sitk_geometry_gap(back, src) if np.linalg.det(np.reshape(src.GetDirection(), (3, 3))) > 0 else None
    values = sitk.GetArrayFromImage(back).transpose(2, 1, 0)
    if gap is None:
        # a left-handed (enhanced) source: GDCM sorts the classic output along the normal, i.e. k reversed
        flipped = sitk.Flip(src, [False, False, True])
        gap = sitk_geometry_gap(back, flipped)
        values = values[:, :, ::-1]
    source_header = source_header if source_header is not None else load_image(source).native.header
    sops, slope = set(), None
    saved = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        for f in files:
            ds = pydicom.dcmread(f)
            for element in ds.iterall():  # every value parsed under strict validation
                _ = element.value
            assert ds.SOPClassUID == MR_IMAGE_STORAGE and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
            for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
                assert UID(uid).is_valid
            assert ds.SeriesInstanceUID != source_uid and ds.SOPInstanceUID not in sops
            sops.add(ds.SOPInstanceUID)
            for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID",
                            "PatientBirthDate", "PatientSex", "StudyDate", "StudyID", "AccessionNumber"):
                assert ds.get(keyword) == source_header.get(keyword), keyword
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID
            assert "synthetic" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
            slope = float(ds.RescaleSlope)
    finally:
        config.settings.reading_validation_mode = saved
    error = float(np.abs(values - expected).max())
    assert gap < 1e-4 and error <= slope / 2 * 1.001 + 1e-6
    return {"gap": gap, "error": error, "slope": slope}


def test_convert_writes_a_new_series_of_the_same_study(tmp_path: Path, tiny_model: Path, capsys) -> None:
    truth = write_classic(tmp_path / "in" / "t1")
    argv = ["--model", str(tiny_model), "--progress", "none"]
    assert convert_main([str(tmp_path / "in" / "t1"), str(tmp_path / "t2.nii.gz"), *argv]) == 0
    nifti = load_image(tmp_path / "t2.nii.gz")
    np.testing.assert_allclose(nifti.affine, truth["affine"], atol=1e-4)
    out = tmp_path / "out" / "t2_series"
    assert convert_main([str(tmp_path / "in" / "t1"), str(out), "--to", "dicom", *argv]) == 0
    figures = check_written(out, tmp_path / "in" / "t1", nifti.array, truth["uid"])
    assert figures["error"] > 0  # a real translation, quantised
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    # a run folder's model.pt is named by its folder
    assert ds.SeriesDescription == f"synthetic T2 from t1 phantom (medsynth {tiny_model.parent.name})"
    assert "t1-to-t2" in ds.DerivationDescription and truth["uid"] in ds.DerivationDescription
    # refusals: a non-empty folder without --overwrite, a non-DICOM input, a folder holding other things
    capsys.readouterr()
    assert convert_main([str(tmp_path / "in" / "t1"), str(out), "--to", "dicom", *argv]) == 2
    assert "use --overwrite" in capsys.readouterr().err
    before = {p.name for p in out.iterdir()}
    assert convert_main([str(tmp_path / "in" / "t1"), str(out), "--to", "dicom", "--overwrite", *argv]) == 0
    assert {p.name for p in out.iterdir()} == before and len(list(out.parent.iterdir())) == 1
    assert pydicom.dcmread(sorted(out.iterdir())[0]).SeriesInstanceUID != ds.SeriesInstanceUID
    assert convert_main([str(tmp_path / "t2.nii.gz"), str(tmp_path / "o2"), "--to", "dicom", *argv]) == 2
    assert "--to dicom needs one DICOM series as input" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    assert convert_main([str(tmp_path / "in" / "t1"), str(tmp_path / "busy"), "--to", "dicom", "--overwrite",
                         *argv]) == 2
    assert "not a DICOM file" in capsys.readouterr().err and (tmp_path / "busy" / "notes.txt").exists()
    assert convert_main([str(tmp_path / "in" / "t1"), str(tmp_path / "in" / "t1"), "--to", "dicom", "--overwrite",
                         *argv]) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "t2.nii.gz"), str(tmp_path / "x.nii.gz"), "--series", "1.2", *argv]) == 2
    assert "--series picks a series" in capsys.readouterr().err


def test_enhanced_input_round_trips_as_classic_files(tmp_path: Path, identity_model: Path) -> None:
    write_enhanced(tmp_path / "e" / "enh.dcm")
    image = load_image(tmp_path / "e" / "enh.dcm")
    out = tmp_path / "out"
    assert convert_main([str(tmp_path / "e" / "enh.dcm"), str(out), "--to", "dicom", "--model",
                         str(identity_model), "--progress", "none"]) == 0
    from medsynth.inference import Translator

    expected = Translator.from_file(identity_model, device="cpu").translate(image).array
    check_written(out, tmp_path / "e" / "enh.dcm", expected, image.native.uid)
    frames = [pydicom.dcmread(f).SourceImageSequence[0].ReferencedFrameNumber for f in sorted(out.iterdir())]
    assert frames == list(range(1, SHAPE[2] + 1))


def test_a_batch_of_series_folders_is_written_as_nifti(tmp_path: Path, identity_model: Path, capsys) -> None:
    a = write_classic(tmp_path / "in" / "p1" / "t1")
    write_enhanced(tmp_path / "in" / "p2" / "enh.dcm")
    assert convert_main([str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(identity_model),
                         "--progress", "none"]) == 0
    one = load_image(tmp_path / "out" / "p1" / "t1.nii.gz")
    np.testing.assert_allclose(one.affine, a["affine"], atol=1e-4)
    assert load_image(tmp_path / "out" / "p2.nii.gz").array.shape == SHAPE
    # run again: both series outputs exist under their NIfTI names, so both are skipped, none rewritten
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.nii.gz")}
    assert convert_main([str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(identity_model),
                         "--progress", "none"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.nii.gz")} == written
    assert "skipped 2 existing" in capsys.readouterr().err


def test_write_series_refuses_a_non_dicom_reference(tmp_path: Path, make_volume) -> None:
    image = load_image(make_volume(tmp_path, "t1.nii.gz"))
    with pytest.raises(InputError, match="not a DICOM series"):
        write_series(image, image.array, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- slicer-core -----------------------------------------------------------------------------------------------
def slicer_read(files: list[Path]) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """A DICOM series read into a vtkMRMLScalarVolumeNode by Slicer's archetype storage node (ITK's GDCM reader,
    what Slicer's DICOM scalar volume plugin loads a file list with): dimensions, IJK-to-RAS, voxels (KJI)."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("this 'slicer' module has no MRML (install slicer-core)")
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(files[0]))
    storage.SetSingleFile(0)
    storage.ResetFileNameList()
    for f in files:
        storage.AddFileName(str(f))
    assert storage.ReadData(node) == 1
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    dims = node.GetImageData().GetDimensions()
    voxels = vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(dims[::-1])
    return dims, np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]), voxels


def test_written_series_loads_into_slicer_as_one_volume(tmp_path: Path, identity_model: Path) -> None:
    truth = write_classic(tmp_path / "t1")
    out = tmp_path / "out"
    assert convert_main([str(tmp_path / "t1"), str(out), "--to", "dicom", "--model", str(identity_model),
                         "--progress", "none"]) == 0
    dims, ijk_to_ras, voxels = slicer_read(sorted(out.iterdir()))
    assert dims == SHAPE
    np.testing.assert_allclose(ijk_to_ras, truth["affine"], atol=1e-4)
    written = load_image(out)
    np.testing.assert_allclose(voxels.transpose(2, 1, 0), written.array, atol=1e-3 * float(written.array.max()))


# ---- the shared scanner series -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_series_read_and_round_trip(shared_data: Path, name: str, tmp_path: Path, identity_model: Path) -> None:
    source = shared_data / "dicom_mr" / name
    if not source.is_dir():
        pytest.skip(f"{source} is not present")
    image = load_image(source, expect="volume")
    ref = sitk_source(source)
    assert image.array.shape == SHARED[name] == ref.GetSize()
    np.testing.assert_allclose(image.affine, itk_affine(ref), atol=1e-4)
    np.testing.assert_allclose(image.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0), rtol=1e-6, atol=1e-3)
    out = tmp_path / "out"
    assert convert_main([str(source), str(out), "--to", "dicom", "--model", str(identity_model),
                         "--progress", "none"]) == 0
    from medsynth.inference import Translator

    expected = Translator.from_file(identity_model, device="cpu").translate(image).array
    figures = check_written(out, source, expected, image.native.uid, image.native.header)
    dims, ijk_to_ras, _ = slicer_read(sorted(out.iterdir()))
    assert dims == SHARED[name]
    # Slicer sorts along the normal: the enhanced (left-handed) source's k runs the other way there
    affine = image.affine.copy()
    if np.linalg.det(affine[:3, :3]) < 0:
        affine[:3, 3] += affine[:3, 2] * (SHARED[name][2] - 1)
        affine[:3, 2] *= -1
    np.testing.assert_allclose(ijk_to_ras, affine, atol=1e-4)
    print(f"{name}: size {image.array.shape}, spacing {np.round(image.spacing, 5)}, geometry gap "
          f"{figures['gap']:.2g} mm, value error {figures['error']:.3g} (slope {figures['slope']:.3g})")
