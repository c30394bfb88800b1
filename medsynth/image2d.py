"""Reading and writing 2-D medical images: PNG, JPEG, TIFF and single-frame DICOM.

Every reader returns a ``float32`` array of shape ``(rows, cols)``: grey (RGB/RGBA converted with the
ITU-R BT.709 luma weights of :func:`skimage.color.rgb2gray`), bone bright (DICOM ``MONOCHROME1`` and TIFF
``WhiteIsZero`` inverted), in the file's own units (DICOM rescale slope/intercept applied; PNG/TIFF stored
values unchanged, so a 16-bit PNG reads as 0..65535). The :class:`Image2DMeta` that comes with it holds what
:func:`write_image2d` needs to write a result back in the same format and bit depth.

Example:
    >>> array, meta = read_image2d("RG1_UNCR.dcm")          # doctest: +SKIP
    >>> write_image2d("out.dcm", array * 0.5, meta)          # doctest: +SKIP

DICOM pixels are decoded by ITK's GDCM reader through SimpleITK (it handles the compressed transfer
syntaxes and applies rescale slope/intercept); the tags come from pydicom. pydicom decodes the pixels when
ITK cannot (e.g. signed 12-bit ``MONOCHROME1``, which GDCM rejects) or when a Modality LUT sequence is
present. Both paths give identical values (tests check it on synthetic files).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.errors import InputError
from medsynth.files import atomic_path

# Pillow, tifffile, pydicom, SimpleITK and scikit-image are imported by the readers and writers that use them:
# every command's parser imports this module (through medsynth.io), and --help must stay instant.

IMAGE2D_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")

_FORMAT_OF_SUFFIX = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".dcm": "dicom",
}
# Which bit depths each output format can store (32 = float32, TIFF only).
_DEPTHS_OF_FORMAT = {"png": (8, 16), "jpeg": (8,), "tiff": (8, 16, 32), "dicom": (8, 16)}


@dataclass
class Image2DMeta:
    """Everything needed to write a 2-D image back in the format it was read from.

    Attributes:
        format: ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"dicom"``.
        bit_depth: stored depth of the input: 8, 16 (also for 9-16 bit DICOM) or 32 (float TIFF).
        spacing: mm per pixel as (row, col): DICOM PixelSpacing, else ImagerPixelSpacing, else (1.0, 1.0).
        photometric: DICOM PhotometricInterpretation of the input (``None`` for other formats).
        value_range: (min, max) representable in the input's units (after rescale). Writing maps this range
            onto the output's integer range when the output format or depth differs from the input's.
        extra: reader details: ``source``, ``mode`` (how the pixels were stored), ``converted_to_grey`` (RGB or
            RGBA turned into its luminance), ``colour`` (those channels differed: the grey lost the colour),
            ``inverted`` (MONOCHROME1/WhiteIsZero turned bone-bright), and for DICOM ``dicom_header`` (the
            pydicom dataset without pixels), ``rescale`` (slope, intercept), ``stored_range``, ``bits_stored``,
            ``signed``, ``reader`` (``"itk"`` or ``"pydicom"``) and ``spacing_source``.
    """

    format: str
    bit_depth: int
    spacing: tuple[float, float] = (1.0, 1.0)
    photometric: str | None = None
    value_range: tuple[float, float] = (0.0, 255.0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def colour(self) -> bool:
        """True for a colour picture read as its luminance; a grey picture stored as RGB is not colour."""
        return bool(self.extra.get("colour", False))


# --------------------------------------------------------------------------------------------- helpers


def natural_sort_key(path: str | os.PathLike[str]) -> tuple:
    """Sort key that orders numbers by value: ``CT_PNG (2).png`` before ``CT_PNG (10).png``.

    Case-insensitive; the full path is the key, so files group by folder. The original string breaks ties
    (``a01`` vs ``a1``) so the order is total.
    """
    text = Path(path).as_posix()
    parts = re.split(r"(\d+)", text)
    # re.split with a capture group alternates text, number, text, ...: equal positions compare equal types.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (text,)


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a DICOM Part-10 file (``DICM`` after the 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_image2d(path: str | os.PathLike[str]) -> bool:
    """True for files :func:`read_image2d` reads: a 2-D suffix, or a DICOM file without one."""
    p = Path(path)
    if p.suffix.lower() in IMAGE2D_SUFFIXES:
        return True
    return p.suffix == "" and p.is_file() and is_dicom(p)


def format_of(path: str | os.PathLike[str]) -> str | None:
    """The 2-D format a path's suffix names (``"png"``, ``"jpeg"``, ``"tiff"``, ``"dicom"``), else None."""
    return _FORMAT_OF_SUFFIX.get(Path(path).suffix.lower())


def _to_grey(rgb: np.ndarray, full_scale: float) -> np.ndarray:
    """RGB(A) integers -> grey in the same units; fully transparent pixels become 0 (background).

    Alpha is otherwise ignored: in the data we have it is a display artefact (values 216-255 scattered
    over CT slices), and compositing would change tissue intensities.
    """
    from skimage.color import rgb2gray

    grey = rgb2gray(rgb[..., :3]) * full_scale  # rgb2gray scales integer input to [0, 1]
    if rgb.shape[-1] == 4:
        grey[rgb[..., 3] == 0] = 0.0
    return grey


def _has_colour(rgb: np.ndarray) -> bool:
    """True when the red, green and blue channels of an RGB(A) array differ somewhere: its luminance then loses
    the colour. Grey pictures saved as RGB (the usual export of slices and X-rays) lose nothing."""
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 0] != rgb[..., 2]))


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if p.is_dir():
        raise InputError(p, "is a folder, not a 2-D image file")
    if p.stat().st_size == 0:
        raise InputError(p, "empty file")
    return p


# --------------------------------------------------------------------------------------------- reading


def read_image2d(path: str | os.PathLike[str]) -> tuple[np.ndarray, Image2DMeta]:
    """Read a 2-D image as a float32 (rows, cols) grey array, bone bright, in the file's units.

    Args:
        path: a ``.png``, ``.jpg``/``.jpeg``, ``.tif``/``.tiff`` or ``.dcm`` file, or a DICOM file with no
            suffix.

    Returns:
        ``(array, meta)``; pass ``meta`` to :func:`write_image2d` to write a result in the same format.

    Raises:
        InputError: missing, empty, corrupt or non-image files, unsupported pixel types, and 3-D stacks
            (multi-frame DICOM, multi-page TIFF, animated PNG).
    """
    p = _check_path(path)
    fmt = format_of(p)
    if fmt is None or (fmt != "dicom" and is_dicom(p)):
        if is_dicom(p):
            fmt = "dicom"
        else:
            raise InputError(
                p, f"unsupported 2-D image type {p.suffix or '(no suffix)'!r}; expected one of "
                + ", ".join(IMAGE2D_SUFFIXES) + " or a DICOM file"
            )
    if fmt == "dicom":
        array, meta = _read_dicom(p)
    elif fmt == "tiff":
        array, meta = _read_tiff(p)
    else:
        array, meta = _read_pillow(p, fmt)
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(p, f"expected a 2-D image, got pixel array of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(p, "image contains NaN or infinite values")
    meta.extra.setdefault("source", str(p))
    return np.ascontiguousarray(array, dtype=np.float32), meta


def _read_pillow(p: Path, fmt: str) -> tuple[np.ndarray, Image2DMeta]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InputError(p, f"has {frames} frames (an animation or 3-D stack); expected one 2-D image")
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "F"):
                im = im.convert("RGB")  # CMYK, YCbCr, LAB ... JPEGs
            pixels = np.asarray(im)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(p, f"not a readable {fmt.upper()} image ({exc})") from None

    extra: dict[str, Any] = {"mode": mode, "converted_to_grey": False, "inverted": False}
    if mode.startswith("I") or mode == "F":
        # 16-bit greyscale PNG (Pillow calls it "I;16", older versions "I").
        if pixels.min() < 0 or pixels.max() > 65535 or mode == "F":
            raise InputError(p, f"unsupported pixel type (Pillow mode {mode}); expected 8- or 16-bit")
        bit_depth = 16
        array = pixels.astype(np.float32)
    else:
        bit_depth = 8
        if pixels.dtype == bool:  # mode "1"
            array = pixels.astype(np.float32) * 255.0
        elif pixels.ndim == 2:
            array = pixels.astype(np.float32)
        elif pixels.shape[-1] == 2:  # LA
            array = pixels[..., 0].astype(np.float32)
            array[pixels[..., 1] == 0] = 0.0
            extra["converted_to_grey"] = True
        else:
            array = _to_grey(pixels, 255.0).astype(np.float32)
            extra["converted_to_grey"] = True
            extra["colour"] = _has_colour(pixels)
    full = float(2**bit_depth - 1)
    return array, Image2DMeta(fmt, bit_depth, (1.0, 1.0), None, (0.0, full), extra)


def _read_tiff(p: Path) -> tuple[np.ndarray, Image2DMeta]:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            if len(tf.pages) > 1:
                raise InputError(p, f"has {len(tf.pages)} pages (a 3-D stack); expected one 2-D image")
            page = tf.pages[0]
            photometric = int(page.photometric)
            pixels = page.asarray()
    except InputError:
        raise
    except Exception as exc:  # tifffile raises several types for damaged files
        raise InputError(p, f"not a readable TIFF image ({exc})") from None

    extra: dict[str, Any] = {"mode": str(pixels.dtype), "converted_to_grey": False, "inverted": False}
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4) and photometric == 2:  # RGB
        extra["converted_to_grey"] = True
        extra["colour"] = _has_colour(pixels)
    elif pixels.ndim != 2:
        raise InputError(p, f"pixel array of shape {pixels.shape} is not one 2-D image (a 3-D stack?)")
    dtype = pixels.dtype
    if dtype == np.uint8:
        bit_depth, value_range = 8, (0.0, 255.0)
    elif dtype == np.uint16:
        bit_depth, value_range = 16, (0.0, 65535.0)
    elif dtype == np.int16:
        bit_depth, value_range = 16, (-32768.0, 32767.0)
    elif dtype.kind == "f":
        bit_depth = 32
        value_range = (float(pixels.min()), float(pixels.max()))
    else:
        raise InputError(p, f"unsupported TIFF pixel type {dtype}; expected uint8, uint16, int16 or float")
    extra["dtype"] = str(dtype)
    if extra["converted_to_grey"]:
        full = value_range[1] if dtype.kind == "u" else 1.0
        array = _to_grey(pixels, full)
    else:
        array = pixels.astype(np.float64)
    if photometric == 0:  # WhiteIsZero: the TIFF analogue of MONOCHROME1
        array = (value_range[0] + value_range[1]) - array
        extra["inverted"] = True
    return array.astype(np.float32), Image2DMeta("tiff", bit_depth, (1.0, 1.0), None, value_range, extra)


@functools.lru_cache(maxsize=1)
def _itk_inverts_monochrome1() -> bool | None:
    """Whether this ITK/GDCM build turns MONOCHROME1 into MONOCHROME2 on reading (ITK 5.x does).

    Found once per process by reading a 1x2 synthetic file; None if the probe itself fails, in which case
    MONOCHROME1 files are decoded with pydicom.
    """
    import SimpleITK as sitk

    try:
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.dcm"
            _write_dicom_dataset(probe, _new_dicom_dataset(), np.array([[0, 4095]], np.uint16), 12, False,
                                 "MONOCHROME1")
            values = sitk.GetArrayFromImage(sitk.ReadImage(str(probe))).ravel().tolist()
    except Exception:
        return None
    if values == [4095, 0]:
        return True
    if values == [0, 4095]:
        return False
    return None


def _positive_pair(value: Any) -> tuple[float, float] | None:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) == 2 and all(v > 0 and np.isfinite(v) for v in pair):
        return pair  # type: ignore[return-value]
    return None


def _read_dicom(p: Path) -> tuple[np.ndarray, Image2DMeta]:
    import pydicom

    try:
        header = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as exc:
        raise InputError(p, f"not a readable DICOM file ({exc})") from None
    if "Rows" not in header or "Columns" not in header:
        raise InputError(p, "DICOM file holds no image (no Rows/Columns)")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(p, f"multi-frame DICOM with {frames} frames (a 3-D stack); expected one 2-D image")
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits_allocated = int(header.get("BitsAllocated", 16))
    bits_stored = int(header.get("BitsStored", bits_allocated))
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise InputError(p, f"unsupported DICOM pixel data (BitsAllocated {bits_allocated}, "
                            f"BitsStored {bits_stored}); expected 8 or 16 bits allocated")
    signed = int(header.get("PixelRepresentation", 0)) == 1
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    stored_range = ((-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed
                    else (0, 2**bits_stored - 1))
    ends = sorted(v * slope + intercept for v in stored_range)
    value_range = (float(ends[0]), float(ends[1]))
    monochrome = photometric in ("MONOCHROME1", "MONOCHROME2")

    itk_inverts = _itk_inverts_monochrome1() if photometric == "MONOCHROME1" else False
    use_itk = itk_inverts is not None and "ModalityLUTSequence" not in header
    pixels, reader, itk_error = None, "itk", ""
    if use_itk:
        import SimpleITK as sitk

        try:
            pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
        except RuntimeError as exc:
            itk_error = str(exc).strip().splitlines()[-1]
    if pixels is None:
        reader = "pydicom"
        try:
            from pydicom.pixels import apply_color_lut, apply_modality_lut

            full = pydicom.dcmread(p)
            pixels = full.pixel_array
            if monochrome:
                pixels = apply_modality_lut(pixels, full)
            elif photometric == "PALETTE COLOR":
                pixels = apply_color_lut(pixels, full)
        except Exception as exc:
            detail = f"ITK: {itk_error}; pydicom: {exc}" if itk_error else str(exc)
            raise InputError(p, f"cannot decode DICOM pixel data ({detail})") from None
    pixels = np.asarray(pixels)
    if pixels.ndim >= 3 and pixels.shape[0] == 1 and (monochrome or pixels.ndim == 4):
        pixels = pixels[0]  # ITK returns (1, rows, cols[, 3])

    extra: dict[str, Any] = {
        "dicom_header": header, "rescale": (slope, intercept), "stored_range": stored_range,
        "bits_stored": bits_stored, "signed": signed, "reader": reader, "converted_to_grey": False,
        "inverted": False, "mode": photometric,
    }
    if not monochrome:
        if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
            raise InputError(p, f"unexpected {photometric} pixel array of shape {pixels.shape}")
        full_scale = float(2 ** (16 if photometric == "PALETTE COLOR" else bits_stored) - 1)
        # YBR photometrics come decoded to RGB (pydicom and ITK convert them)
        extra["colour"] = _has_colour(pixels)
        pixels = _to_grey(pixels, full_scale)
        if photometric == "PALETTE COLOR":
            pixels = pixels * ((2**bits_stored - 1) / full_scale)
        extra["converted_to_grey"] = True
    array = pixels.astype(np.float64)
    if array.shape != (int(header.Rows), int(header.Columns)):
        raise InputError(p, f"decoded pixel array {array.shape} does not match Rows/Columns "
                            f"({header.Rows}, {header.Columns})")
    if photometric == "MONOCHROME1":
        if not (reader == "itk" and itk_inverts):
            array = (value_range[0] + value_range[1]) - array
        extra["inverted"] = True

    spacing, source = (1.0, 1.0), "default"
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(header.get(tag))
        if pair is not None:
            spacing, source = pair, tag
            break
    extra["spacing_source"] = source
    bit_depth = 8 if bits_stored <= 8 else 16
    return array.astype(np.float32), Image2DMeta("dicom", bit_depth, spacing, photometric, value_range, extra)


# --------------------------------------------------------------------------------------------- writing


def write_image2d(
    path: str | os.PathLike[str],
    array: np.ndarray,
    meta: Image2DMeta,
    bit_depth: int | None = None,
) -> Path:
    """Write a 2-D image atomically, in the format of ``path``'s suffix (``meta.format`` if it has none).

    Values are in the input's units (those :func:`read_image2d` returned). Written back in the input's own
    format and depth they are stored exactly as read (inverse rescale for DICOM); otherwise
    ``meta.value_range`` is mapped linearly onto the output's integer range (e.g. a 15-bit DICOM's
    0..32767 onto 0..65535 in a 16-bit PNG). Values outside the range are clipped.

    DICOM output copies the input's tags (or makes a Secondary Capture if the input was not DICOM), stores
    the pixels uncompressed as MONOCHROME2 with new SOP/Series instance UIDs, ``ImageType`` DERIVED, and says
    in ``DerivationDescription`` when a MONOCHROME1 input was inverted.

    Args:
        path: output file (``.png``, ``.jpg``, ``.tif``, ``.dcm``; no suffix writes ``meta.format``).
        array: (rows, cols) or (rows, cols, 1) values.
        meta: the metadata :func:`read_image2d` returned for the input.
        bit_depth: 8 or 16 (32 = float32 TIFF); default the input's depth where the format allows.

    Returns:
        the written path.
    """
    p = Path(path)
    fmt = format_of(p) or (meta.format if p.suffix == "" else None)
    if fmt is None:
        raise InputError(p, f"cannot write 2-D images as {p.suffix!r}; use one of " + ", ".join(IMAGE2D_SUFFIXES))
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise InputError(p, f"expected a 2-D array to write, got shape {values.shape}")
    allowed = _DEPTHS_OF_FORMAT[fmt]
    depth = bit_depth if bit_depth is not None else (meta.bit_depth if meta.bit_depth in allowed else max(
        d for d in allowed if d <= 16))
    if depth not in allowed:
        raise InputError(p, f"{fmt.upper()} cannot store {depth}-bit pixels; choose from {allowed}")

    lo_v, hi_v = meta.value_range
    values = np.nan_to_num(values, nan=lo_v, posinf=hi_v, neginf=lo_v)
    same = fmt == meta.format and depth == meta.bit_depth
    if depth == 32:
        stored, slope, intercept, stored_range = values.astype(np.float32), 1.0, 0.0, None
    else:
        if same:
            slope, intercept = meta.extra.get("rescale", (1.0, 0.0))
            stored_range = tuple(meta.extra.get("stored_range", (lo_v, hi_v)))
        else:
            full = 2**depth - 1
            slope = (hi_v - lo_v) / full if hi_v > lo_v else 1.0
            intercept = lo_v
            stored_range = (0, full)
        dtype = np.dtype(meta.extra["dtype"]) if same and "dtype" in meta.extra else None
        if dtype is None or dtype.kind == "f":
            signed = stored_range[0] < 0
            dtype = np.dtype(("int" if signed else "uint") + str(8 if depth == 8 else 16))
        stored = np.clip(np.rint((values - intercept) / slope), *stored_range).astype(dtype)

    with atomic_path(p) as tmp:
        if fmt in ("png", "jpeg"):
            from PIL import Image

            image = Image.fromarray(stored)
            if fmt == "png":
                image.save(tmp, format="PNG")
            else:
                image.save(tmp, format="JPEG", quality=95)
        elif fmt == "tiff":
            import tifffile

            tifffile.imwrite(tmp, stored, photometric="minisblack")
        else:
            _write_dicom(tmp, stored, meta, depth, same, slope, intercept)
    return p


def _new_dicom_dataset() -> Any:
    """A minimal Secondary Capture dataset (no pixels) for DICOM output of non-DICOM input."""
    import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = datetime.date.today().strftime("%Y%m%d")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def _write_dicom_dataset(path: Path, ds: Any, stored: np.ndarray, bits_stored: int, signed: bool,
                         photometric: str = "MONOCHROME2") -> None:
    """Put ``stored`` into ``ds`` as uncompressed pixel data and save a Part-10 file."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    bits_allocated = stored.dtype.itemsize * 8
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SeriesInstanceUID = generate_uid()
    for keyword in ("NumberOfFrames", "PlanarConfiguration", "SmallestImagePixelValue",
                    "LargestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit",
                    "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    ds.save_as(path, enforce_file_format=True)


def _write_dicom(path: Path, stored: np.ndarray, meta: Image2DMeta, depth: int, same: bool,
                 slope: float, intercept: float) -> None:
    from pydicom.multival import MultiValue

    header = meta.extra.get("dicom_header") if meta.format == "dicom" else None
    ds = copy.deepcopy(header) if header is not None else _new_dicom_dataset()
    notes = ["medsynth output"]
    if meta.extra.get("inverted") and meta.photometric == "MONOCHROME1":
        # Pixels were inverted on reading so bone is bright; a window or VOI LUT meant for MONOCHROME1
        # would now be mirrored.
        lo_v, hi_v = meta.value_range
        if "WindowCenter" in ds:
            centres = ds.WindowCenter
            if isinstance(centres, (MultiValue, list, tuple)):
                ds.WindowCenter = [_ds_number(lo_v + hi_v - float(c)) for c in centres]
            else:
                ds.WindowCenter = _ds_number(lo_v + hi_v - float(centres))
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
        notes.append("pixel data inverted from MONOCHROME1 to MONOCHROME2 (bone bright)")
    if meta.extra.get("converted_to_grey"):
        notes.append(f"converted to grey from {meta.extra.get('mode')}")
    if "PresentationLUTShape" in ds:
        ds.PresentationLUTShape = "IDENTITY"
    if header is None:
        ds.PixelSpacing = [_ds_number(v) for v in meta.spacing]
    if not (slope == 1.0 and intercept == 0.0 and "RescaleSlope" not in ds):  # else keep it absent
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleIntercept = _ds_number(intercept)
    image_type = list(ds.get("ImageType", ["DERIVED", "SECONDARY"]))
    ds.ImageType = ["DERIVED"] + image_type[1:] if image_type else ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "; ".join(notes)[:1024]
    if same:
        bits_stored = int(meta.extra.get("bits_stored", depth))
        signed = bool(meta.extra.get("signed", False))
    else:
        bits_stored, signed = depth, False
    _write_dicom_dataset(path, ds, stored, bits_stored, signed)


def _ds_number(value: float) -> str:
    """Format a number for a DICOM DS element (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"
