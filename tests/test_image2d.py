"""2-D image IO: PNG/JPEG/TIFF/DICOM reading to grey bone-bright floats, writing back in the same format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from medsynth import image2d
from medsynth.errors import InputError
from medsynth.image2d import (
    IMAGE2D_SUFFIXES,
    Image2DMeta,
    is_dicom,
    natural_sort_key,
    read_image2d,
    write_image2d,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
XRAY = DATA / "chest_xray"


def make_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               signed: bool = False, rescale: tuple[float, float] | None = None,
               spacing: tuple[float, float] | None = (0.5, 0.25), frames: int = 1, **tags) -> Path:
    """A real Part-10 DICOM written by pydicom (uncompressed, explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "Test^Phantom"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 12, cols: int = 16, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, rows * cols).round().astype(np.int64).reshape(rows, cols)


# ------------------------------------------------------------------------------------------- PNG / JPEG


def test_grey_png_reads_exactly_and_writes_back_the_same(tmp_path):
    pixels = ramp(top=255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    array, meta = read_image2d(tmp_path / "a.png")
    assert array.dtype == np.float32 and array.shape == pixels.shape
    np.testing.assert_array_equal(array, pixels)
    assert (meta.format, meta.bit_depth, meta.value_range, meta.spacing) == ("png", 8, (0.0, 255.0), (1.0, 1.0))
    out = write_image2d(tmp_path / "b.png", array, meta)
    with Image.open(out) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), pixels)


def test_16bit_png_keeps_its_depth(tmp_path):
    pixels = ramp(top=65535).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    array, meta = read_image2d(tmp_path / "a.png")
    assert meta.bit_depth == 16 and meta.value_range == (0.0, 65535.0)
    np.testing.assert_array_equal(array, pixels)
    write_image2d(tmp_path / "b.png", array, meta)
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im), pixels)
    # asking for 8 bits maps the 16-bit range onto 0..255
    write_image2d(tmp_path / "c.png", array, meta, bit_depth=8)
    with Image.open(tmp_path / "c.png") as im:
        assert im.mode == "L"
        assert np.asarray(im).min() == 0 and np.asarray(im).max() == 255


def test_rgb_and_rgba_become_grey(tmp_path):
    grey = ramp(top=255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    array, meta = read_image2d(tmp_path / "rgb.png")
    np.testing.assert_allclose(array, grey, atol=0.01)  # r == g == b keeps the grey value
    assert meta.extra["converted_to_grey"]

    colour = np.zeros((4, 4, 4), np.uint8)
    colour[..., 0], colour[..., 3] = 200, 255  # opaque red
    colour[0, 0, 3] = 0  # one transparent pixel: background
    colour[1, 1, 3] = 100  # partly transparent: alpha ignored
    Image.fromarray(colour, "RGBA").save(tmp_path / "rgba.png")
    array, _ = read_image2d(tmp_path / "rgba.png")
    assert array[0, 0] == 0
    assert array[1, 1] == pytest.approx(200 * 0.2125, abs=0.01)  # BT.709 red weight
    assert array[2, 2] == pytest.approx(200 * 0.2125, abs=0.01)


def test_jpeg_reads_as_8bit_grey_and_refuses_16bit_output(tmp_path):
    rgb = np.stack([ramp(top=255).astype(np.uint8)] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=98)
    array, meta = read_image2d(tmp_path / "a.jpg")
    assert (meta.format, meta.bit_depth) == ("jpeg", 8)
    assert np.abs(array - rgb[..., 0]).mean() < 3
    with pytest.raises(InputError, match="JPEG cannot store 16-bit"):
        write_image2d(tmp_path / "b.jpg", array, meta, bit_depth=16)
    write_image2d(tmp_path / "b.jpg", array, meta)
    assert read_image2d(tmp_path / "b.jpg")[1].format == "jpeg"


# ------------------------------------------------------------------------------------------- TIFF


def test_tiff_16bit_roundtrip_and_white_is_zero_inverted(tmp_path):
    pixels = ramp(top=60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="minisblack")
    array, meta = read_image2d(tmp_path / "a.tif")
    assert (meta.format, meta.bit_depth) == ("tiff", 16)
    np.testing.assert_array_equal(array, pixels)
    write_image2d(tmp_path / "b.tif", array, meta)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b.tif"), pixels)

    tifffile.imwrite(tmp_path / "w.tif", pixels, photometric="miniswhite")
    inverted, meta = read_image2d(tmp_path / "w.tif")
    assert meta.extra["inverted"]
    np.testing.assert_array_equal(inverted, 65535 - pixels.astype(np.float32))


def test_tiff_stack_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match="3-D stack"):
        read_image2d(tmp_path / "stack.tif")


# ------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("rescale", [None, (2.0, -100.0)])
def test_monochrome1_and_monochrome2_of_the_same_pixels_are_inverses(tmp_path, rescale):
    raw = ramp()
    slope, intercept = rescale or (1.0, 0.0)
    mono2, meta2 = read_image2d(make_dicom(tmp_path / "m2.dcm", raw, "MONOCHROME2", rescale=rescale))
    mono1, meta1 = read_image2d(make_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1", rescale=rescale))
    np.testing.assert_allclose(mono2, raw * slope + intercept)  # slope/intercept applied
    lo, hi = meta1.value_range
    assert (lo, hi) == (intercept, 4095 * slope + intercept)
    np.testing.assert_allclose(mono1 + mono2, lo + hi)  # exact inverses within the 12-bit range
    assert meta1.photometric == "MONOCHROME1" and meta1.extra["inverted"]
    assert meta2.photometric == "MONOCHROME2" and not meta2.extra["inverted"]
    assert meta1.bit_depth == 16 and meta1.spacing == (0.5, 0.25)


def test_pydicom_path_inverts_like_itk(tmp_path, monkeypatch):
    raw = ramp()
    path = make_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1", rescale=(2.0, -100.0))
    via_itk, meta = read_image2d(path)
    assert meta.extra["reader"] == "itk"
    monkeypatch.setattr(image2d, "_itk_inverts_monochrome1", lambda: None)  # as if ITK's behaviour were unknown
    via_pydicom, meta = read_image2d(path)
    assert meta.extra["reader"] == "pydicom"
    np.testing.assert_array_equal(via_itk, via_pydicom)


def test_signed_12bit_monochrome1_falls_back_to_pydicom(tmp_path):
    # GDCM refuses signed 12-bit MONOCHROME1; the pydicom path must give the same inverse relation
    raw = ramp() - 2048
    mono2, _ = read_image2d(make_dicom(tmp_path / "m2.dcm", raw, "MONOCHROME2", signed=True))
    mono1, meta = read_image2d(make_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1", signed=True))
    assert meta.value_range == (-2048.0, 2047.0)
    np.testing.assert_array_equal(mono2, raw)
    np.testing.assert_array_equal(mono1 + mono2, -1.0)


def test_dicom_spacing_sources(tmp_path):
    _, meta = read_image2d(make_dicom(tmp_path / "a.dcm", ramp(), spacing=(0.0, 0.0), ImagerPixelSpacing=[0.2, 0.3]))
    assert meta.spacing == (0.2, 0.3) and meta.extra["spacing_source"] == "ImagerPixelSpacing"
    _, meta = read_image2d(make_dicom(tmp_path / "b.dcm", ramp(), spacing=(0.0, 0.0)))
    assert meta.spacing == (1.0, 1.0) and meta.extra["spacing_source"] == "default"


def test_dicom_written_back_as_monochrome2_with_its_tags(tmp_path):
    raw = ramp()
    src = make_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1", rescale=(2.0, -100.0), WindowCenter=4000,
                     WindowWidth=8000)
    array, meta = read_image2d(src)
    out = write_image2d(tmp_path / "out.dcm", array, meta)
    ds = pydicom.dcmread(out)
    original = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert "MONOCHROME1" in ds.DerivationDescription
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (original.Rows, original.Columns, 12)
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.25]
    assert ds.PatientName == original.PatientName and ds.StudyInstanceUID == original.StudyInstanceUID
    assert ds.SOPInstanceUID != original.SOPInstanceUID and ds.ImageType[0] == "DERIVED"
    lo, hi = meta.value_range
    assert float(ds.WindowCenter) == pytest.approx(lo + hi - 4000)  # the window follows the inversion
    again, meta_again = read_image2d(out)
    np.testing.assert_array_equal(again, array)  # same values, now stored bone-bright
    assert meta_again.value_range == meta.value_range


def test_dicom_to_16bit_png_maps_the_stored_range(tmp_path):
    array, meta = read_image2d(make_dicom(tmp_path / "a.dcm", ramp()))
    write_image2d(tmp_path / "a.png", array, meta)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I;16")
        png = np.asarray(im).astype(np.int64)
    np.testing.assert_array_equal(png, np.rint(ramp() * 65535 / 4095))


def test_png_to_dicom_makes_a_secondary_capture(tmp_path):
    Image.fromarray(ramp(top=255).astype(np.uint8)).save(tmp_path / "a.png")
    array, meta = read_image2d(tmp_path / "a.png")
    write_image2d(tmp_path / "a.dcm", array, meta)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert ds.Modality == "OT" and ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
    np.testing.assert_array_equal(ds.pixel_array, ramp(top=255))


def test_dicom_without_suffix_and_multiframe(tmp_path):
    path = make_dicom(tmp_path / "IM0001", ramp())
    assert is_dicom(path) and not is_dicom(tmp_path)
    assert read_image2d(path)[1].format == "dicom"
    multi = make_dicom(tmp_path / "multi.dcm", np.stack([ramp(), ramp()]), frames=2)
    with pytest.raises(InputError, match="multi-frame DICOM with 2 frames"):
        read_image2d(multi)


# ------------------------------------------------------------------------------------------- errors


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image2d(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image2d(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_image2d(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(InputError, match="not a readable PNG image"):
        read_image2d(tmp_path / "text.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # does not compress
    Image.fromarray(noise).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:2000])
    with pytest.raises(InputError, match="cut.png: not a readable PNG"):
        read_image2d(tmp_path / "cut.png")
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(InputError, match="fake.dcm"):
        read_image2d(tmp_path / "fake.dcm")
    (tmp_path / "a.bmp").write_bytes(b"BM....")
    with pytest.raises(InputError, match="unsupported 2-D image type '.bmp'"):
        read_image2d(tmp_path / "a.bmp")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="2 frames"):
        read_image2d(tmp_path / "anim.png")
    assert str(InputError("x", "y")) == "x: y"


def test_writing_is_atomic_and_checks_its_input(tmp_path):
    meta = Image2DMeta("png", 8)
    with pytest.raises(InputError, match="expected a 2-D array"):
        write_image2d(tmp_path / "a.png", np.zeros((2, 3, 4)), meta)
    with pytest.raises(InputError, match="cannot write 2-D images as '.bmp'"):
        write_image2d(tmp_path / "a.bmp", np.zeros((2, 3)), meta)
    write_image2d(tmp_path / "sub" / "a.png", np.full((2, 3, 1), 300.0), meta)  # (rows, cols, 1) accepted
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary file left behind
    np.testing.assert_array_equal(read_image2d(tmp_path / "sub" / "a.png")[0], 255)  # clipped to the range


def test_natural_sort_key():
    names = ["CT_PNG (10).png", "CT_PNG (2).png", "CT_PNG (1).png", "ct_png (3).png"]
    assert sorted(names, key=natural_sort_key) == ["CT_PNG (1).png", "CT_PNG (2).png", "ct_png (3).png",
                                                   "CT_PNG (10).png"]
    assert sorted(["b/1.png", "a/10.png", "a/9.png"], key=natural_sort_key) == ["a/9.png", "a/10.png", "b/1.png"]
    assert ".dcm" in IMAGE2D_SUFFIXES and ".png" in IMAGE2D_SUFFIXES


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (XRAY / "RG1_UNCR.dcm").exists(), reason="shared chest X-ray data not available")
def test_real_monochrome1_xray_reads_bone_bright():
    array, meta = read_image2d(XRAY / "RG1_UNCR.dcm")
    assert array.shape == (1955, 1841) and meta.photometric == "MONOCHROME1" and meta.bit_depth == 16
    assert meta.value_range == (0.0, 32767.0)  # 15 bits stored
    raw = pydicom.dcmread(XRAY / "RG1_UNCR.dcm").pixel_array
    np.testing.assert_array_equal(array, 32767 - raw.astype(np.float32))
    rows, cols = array.shape
    band = slice(int(rows * 0.25), int(rows * 0.55))
    spine = array[band, int(cols * 0.47):int(cols * 0.53)].mean()
    right_lung = array[band, int(cols * 0.22):int(cols * 0.32)].mean()
    left_lung = array[band, int(cols * 0.68):int(cols * 0.78)].mean()
    lungs = (right_lung + left_lung) / 2
    assert spine > lungs * 1.1  # spine and mediastinum brighter than the lung fields


@pytest.mark.skipif(not XRAY.exists(), reason="shared chest X-ray data not available")
def test_real_compressed_dicom_and_rgb_png():
    dcm = next(XRAY.glob("1.2.276*.dcm"))
    array, meta = read_image2d(dcm)  # JPEG baseline transfer syntax, decoded by ITK
    assert array.shape == (1024, 1024) and meta.spacing == pytest.approx((0.168, 0.168)) and meta.bit_depth == 8
    array, meta = read_image2d(next(XRAY.glob("CR.*.png")))
    assert array.ndim == 2 and meta.extra["converted_to_grey"] and 0 <= array.min() < array.max() <= 255


# ------------------------------------------------------------------------------------------- colour


def test_colour_is_told_apart_from_grey_stored_as_rgb(tmp_path):
    """The luminance is always what is read; ``meta.colour`` says whether it lost colour (a converter refuses
    those without --luminance), not merely that the file had three channels."""
    grey = ramp(top=255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 230)], -1), "RGBA").save(tmp_path / "grey_rgba.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    colour = np.stack([grey, grey[::-1], np.full_like(grey, 40)], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    tifffile.imwrite(tmp_path / "grey_rgb.tif", np.stack([grey] * 3, -1), photometric="rgb")
    found = {}
    for name in ("grey_rgb.png", "grey_rgba.png", "grey.png", "colour.png", "colour.tif", "grey_rgb.tif"):
        array, meta = read_image2d(tmp_path / name)
        assert array.shape == grey.shape
        found[name] = (meta.colour, bool(meta.extra["converted_to_grey"]))
    assert found == {"grey_rgb.png": (False, True), "grey_rgba.png": (False, True), "grey.png": (False, False),
                     "colour.png": (True, True), "colour.tif": (True, True), "grey_rgb.tif": (False, True)}


def test_rgb_dicom_colour_flag(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def rgb_dicom(path: Path, pixels: np.ndarray) -> Path:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.astype(np.uint8).tobytes()
        ds.save_as(path, enforce_file_format=True)
        return path

    grey = ramp(top=255).astype(np.uint8)
    _, meta = read_image2d(rgb_dicom(tmp_path / "grey.dcm", np.stack([grey] * 3, -1)))
    assert meta.extra["converted_to_grey"] and not meta.colour
    _, meta = read_image2d(rgb_dicom(tmp_path / "colour.dcm", np.stack([grey, 255 - grey, grey // 2], -1)))
    assert meta.colour
