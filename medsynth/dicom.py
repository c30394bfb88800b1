"""DICOM series in and out: a folder of one series (or one enhanced multi-frame file) read as one volume, and a
translation written back as a new derived series of the same study.

Reading keeps the geometry of the files: the voxel -> patient mapping from ImagePositionPatient /
ImageOrientationPatient / PixelSpacing, with classic slices sorted along the slice normal (as ITK's GDCM reader
does) and the frames of an enhanced file kept in their own order when they run monotonically (so a file whose
frames run against the orientation's normal reads left-handed, det < 0, as ``SimpleITK.ReadImage`` gives it).
PatientPosition (HFS, HFDR, ...) is never "corrected": DICOM coordinates follow the patient, not the magnet.
RescaleSlope/Intercept are applied (per file, or per frame in an enhanced file); private scale factors are not.

A series that would make a wrong volume is refused with one line: several series without a choice, a corrupt
file, a missing slice (a gap in the position steps), uneven steps, sheared slices (gantry tilt), slices at the
same position (echoes, phases), or slices that differ in orientation, size or pixel spacing.

Writing makes classic one-slice MR Image Storage files (also for an enhanced input), uint16 with a rescale that
covers the output's range, in the source's study, frame of reference and patient, with new series and instance
UIDs, ImageType DERIVED\\SECONDARY and references to the source images.
"""

from __future__ import annotations

import datetime
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsynth.errors import InputError
from medsynth.files import create_folder
from medsynth.image2d import is_dicom

# pydicom is imported inside the functions that use it, so that io (imported by every command's parser) stays
# light

__all__ = ["DicomSeries", "MR_IMAGE_STORAGE", "check_output_folder", "dicom_files", "is_multiframe",
           "is_series_folder", "list_series", "quantise", "read_series", "series_description", "write_series"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: suffixes taken as DICOM in a series folder; a file without a suffix is taken when it has the DICM preamble
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: steps between slices may differ by this fraction of the typical step (positions are rounded in the files)
STEP_TOLERANCE = 0.01
#: orientation cosines, pixel spacings (mm) and in-plane drift per mm along the stack that count as the same
GEOMETRY_TOLERANCE = 1e-3
#: the tags read from each file of a folder (its first slice is then read whole, for the modules a new series copies)
_VOLUME_TAGS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber",
                "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
                "BitsStored", "PixelRepresentation", "PhotometricInterpretation", "ImagePositionPatient",
                "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation", "RescaleSlope",
                "RescaleIntercept", "RescaleType")
# modules copied from the source into a derived series (what makes it the same patient, study and space)
_PATIENT = ("PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "OtherPatientIDsSequence",
            "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientComments", "PatientIdentityRemoved",
            "DeidentificationMethod", "DeidentificationMethodCodeSequence", "EthnicGroup", "ResponsiblePerson",
            "ResponsibleOrganization", "PatientSpeciesDescription", "PatientBreedDescription")
_STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
          "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord", "ProcedureCodeSequence",
          "PatientAge", "PatientSize", "PatientWeight", "AdmittingDiagnosesDescription")
_SERIES_KEPT = ("FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition", "BodyPartExamined",
                "Laterality", "MRAcquisitionType")


@dataclass
class DicomSeries:
    """What was read from a DICOM series: the ``native`` of a ``medsynth.io.Image`` of format ``"dicom"``.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        folder: the folder (or, for an enhanced file given by name, its folder).
        files: per slice of the volume (K order), the file it came from (the one file for an enhanced input).
        frames: per slice, its 1-based frame number in an enhanced file, else ``None``.
        headers: per slice, the file's dataset without pixels (one shared dataset for an enhanced input).
        positions: (K, 3) ImagePositionPatient per slice, LPS mm, in K order.
        orientation: the six ImageOrientationPatient cosines (row, column).
        spacing: PixelSpacing (between rows, between columns) in mm.
        slice_thickness: SliceThickness in mm, or ``None``.
        slice_locations: per slice, SliceLocation when the file has one.
        dtype: the smallest integer type that holds the rescaled stored range (what ``dtype="input"`` writes).
        enhanced: read from one enhanced multi-frame file.
    """

    uid: str
    description: str
    folder: Path
    files: list[Path]
    frames: list[int | None]
    headers: list[Any]
    positions: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    slice_thickness: float | None = None
    slice_locations: list[float | None] = field(default_factory=list)
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    enhanced: bool = False

    @property
    def header(self) -> Any:
        """The series-level dataset (patient, study, series modules): the first slice's."""
        return self.headers[0]


# ---- finding series --------------------------------------------------------------------------------------------
def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files directly in ``folder``: a DICOM suffix, or no suffix (or a UID's digits) and the DICM
    preamble; hidden files (``.DS_Store``, partial outputs) are not."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    # exports name files by their SOP Instance UID (1.3.12.2...), whose last digits look like a suffix
    return [p for p in entries if not p.name.startswith(".") and p.is_file() and (
        p.suffix.lower() in DICOM_SUFFIXES or ((not p.suffix or p.suffix[1:].isdigit()) and is_dicom(p)))]


def _header(path: Path, tags: Sequence[str] | None = None, pixels: bool = False) -> Any:
    """The dataset of ``path``: only ``tags``, or all of it; with ``pixels`` (or all of it) the pixel data is
    left on disk until it is asked for (one pass over the file, where a header read and then a full read would
    make two)."""
    import pydicom

    try:
        # pydicom warns about odd values it still reads; a corrupt file is refused below, in one line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if tags and not pixels:
                return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags))
            ds = pydicom.dcmread(path, defer_size=4096, specific_tags=list(tags) + ["PixelData"] if tags else None)
    except Exception as exc:  # pydicom raises many kinds for a corrupt or truncated file
        raise InputError(path, f"not a readable DICOM file ({_short(exc)})") from None
    # pydicom reads garbage after a DICM preamble as unknown elements: a real file names its SOP class
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", {}):
        raise InputError(path, "not a readable DICOM file (no SOP class: corrupt or not DICOM)")
    return ds


def _frames(ds: Any) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def is_multiframe(path: str | Path) -> bool:
    """True for a readable DICOM image file of more than one frame (an enhanced MR/CT file: a volume)."""
    path = Path(path)
    if not path.is_file() or not (path.suffix.lower() in DICOM_SUFFIXES or is_dicom(path)):
        return False
    try:
        ds = _header(path, ("NumberOfFrames", "Rows"))
    except InputError:
        return False
    return "Rows" in ds and _frames(ds) > 1


def is_series_folder(folder: str | Path) -> bool:
    """True if the DICOM files directly in ``folder`` make a volume: a multi-frame file, or at least two slices
    with a position (ImagePositionPatient). A folder of 2-D pictures (X-rays) is not one. Unreadable files are
    left for the reader to report."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    slices = 0
    for path in dicom_files(folder):
        try:
            ds = _header(path, ("NumberOfFrames", "Rows", "ImagePositionPatient"))
        except InputError:
            continue
        if "Rows" not in ds:
            continue
        if _frames(ds) > 1:
            return True
        slices += "ImagePositionPatient" in ds
        if slices >= 2:
            return True
    return False


@dataclass
class _Found:
    uid: str
    description: str
    files: list[tuple[Path, Any]]

    @property
    def slices(self) -> int:
        return sum(_frames(ds) for _, ds in self.files)


def list_series(folder: str | Path) -> list[_Found]:
    """The image series in a folder (its direct DICOM files), by SeriesInstanceUID, in SeriesNumber order.

    Raises:
        InputError: a DICOM-named file that cannot be read.
    """
    found: dict[str, _Found] = {}
    for path in dicom_files(folder):
        # the tags a volume needs (a Philips file holds some 600 more): a third faster than whole headers
        ds = _header(path, _VOLUME_TAGS, pixels=True)
        if "Rows" not in ds:  # DICOMDIR, structured reports, presentation states: not images
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        entry = found.setdefault(uid, _Found(uid, str(ds.get("SeriesDescription", "") or ""), []))
        entry.files.append((path, ds))

    def number(entry: _Found) -> tuple[int, str]:
        value = entry.files[0][1].get("SeriesNumber")
        try:
            return int(value), entry.uid
        except (TypeError, ValueError):
            return 1 << 30, entry.uid

    return sorted(found.values(), key=number)


def _choices(series: Sequence[_Found]) -> str:
    return ", ".join(f'{s.uid} "{s.description}" ({s.slices} slice{"s" * (s.slices != 1)})' for s in series)


# ---- reading -------------------------------------------------------------------------------------------------
def read_series(path: str | Path, series: str | None = None) -> tuple[np.ndarray, np.ndarray, DicomSeries]:
    """Read one DICOM series as a volume.

    Args:
        path: a folder holding the series' files (or several series: see ``series``), or one enhanced
            multi-frame file.
        series: the SeriesInstanceUID to read from a folder of several.

    Returns:
        ``(array, affine, info)``: float32 voxels (I along a row, J down a column, K across slices), the 4x4
        voxel-to-RAS affine, and the :class:`DicomSeries` (what the writer needs).

    Raises:
        InputError: no series, several without a choice (the UIDs, descriptions and slice counts listed), an
            unknown ``series``, a corrupt file, or a stack that is not one regular volume.
    """
    path = Path(path)
    if path.is_file():
        ds = _header(path)
        if series and str(ds.get("SeriesInstanceUID", "")) != series:
            raise InputError(path, f"is series {ds.get('SeriesInstanceUID', '')}, not {series}")
        if "Rows" not in ds or _frames(ds) < 2:
            raise InputError(path, "one DICOM slice, not a volume; give the folder of its series")
        return _read_enhanced(path, ds)
    candidates = list_series(path)
    if not candidates:
        raise InputError(path, "no DICOM images in this folder")
    if series:
        chosen = [s for s in candidates if s.uid == series]
        if not chosen:
            raise InputError(path, f"no series {series} here; it holds {_choices(candidates)}")
        found = chosen[0]
    elif len(candidates) > 1:
        raise InputError(path, f"holds {len(candidates)} DICOM series; choose one with --series UID: "
                               f"{_choices(candidates)}")
    else:
        found = candidates[0]
    multi = [p for p, ds in found.files if _frames(ds) > 1]
    if multi:
        if len(found.files) > 1:
            raise InputError(path, f"series {found.uid} has {len(found.files)} files of which {len(multi)} "
                                   "multi-frame; give one multi-frame file by name")
        return _read_enhanced(multi[0], _header(multi[0]))
    return _read_classic(path, found)


def _floats(value: Any, n: int, path: Path, name: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.isfinite(out).all():
        raise InputError(path, f"{name} is missing or not {n} numbers ({value!r})")
    return out


def _rescale(item: Any) -> tuple[float, float]:
    try:
        slope = float(item.get("RescaleSlope", 1) or 1)
        intercept = float(item.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, intercept


def _read_classic(folder: Path, found: _Found) -> tuple[np.ndarray, np.ndarray, DicomSeries]:
    files = [p for p, _ in found.files]
    if len(files) < 2:
        raise InputError(files[0], "the only slice of its series: a 2-D image, not a volume; give the file itself")
    headers = [ds for _, ds in found.files]
    first = headers[0]
    orientation = _floats(first.get("ImageOrientationPatient"), 6, files[0], "ImageOrientationPatient")
    size = (int(first.Rows), int(first.Columns))
    spacing = _floats(first.get("PixelSpacing"), 2, files[0], "PixelSpacing")
    positions = []
    for p, ds in zip(files, headers):
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(p, f"{ds.SamplesPerPixel} samples per pixel; a volume must be greyscale")
        if _frames(ds) != 1:
            raise InputError(p, "a multi-frame file among single-slice files of the same series")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise InputError(p, f"{ds.Rows}x{ds.Columns} pixels, while {files[0].name} has {size[0]}x{size[1]}: "
                                "slices of different sizes")
        iop = _floats(ds.get("ImageOrientationPatient"), 6, p, "ImageOrientationPatient")
        if np.abs(iop - orientation).max() > GEOMETRY_TOLERANCE:
            raise InputError(p, f"orientation {_fmt(iop)} differs from {files[0].name}'s {_fmt(orientation)}: "
                                "slices of different orientations")
        ps = _floats(ds.get("PixelSpacing"), 2, p, "PixelSpacing")
        if np.abs(ps - spacing).max() > GEOMETRY_TOLERANCE:
            raise InputError(p, f"pixel spacing {_fmt(ps)} differs from {files[0].name}'s {_fmt(spacing)}")
        positions.append(_floats(ds.get("ImagePositionPatient"), 3, p, "ImagePositionPatient"))
    positions = np.asarray(positions)
    normal = np.cross(orientation[:3], orientation[3:])
    # ascending along the normal, ties by InstanceNumber: the order ITK's GDCM series reader gives
    keys = [(float(np.dot(pos, normal)), _int(ds.get("InstanceNumber"))) for pos, ds in zip(positions, headers)]
    order = sorted(range(len(files)), key=lambda k: keys[k])
    files, headers, positions = [files[k] for k in order], [headers[k] for k in order], positions[order]
    _check_stack(folder, files, positions, normal)
    headers[0] = _header(files[0])  # whole: the patient, study and series modules a derived series copies
    array = np.empty((size[1], size[0], len(files)), dtype=np.float32)
    lo, hi = np.inf, -np.inf
    for k, (p, ds) in enumerate(zip(files, headers)):
        stored = _pixels(p, ds)
        if stored.shape != size:
            raise InputError(p, f"pixel data of shape {stored.shape}, not {size}")
        slope, intercept = _rescale(ds)
        array[:, :, k] = (stored.astype(np.float64) * slope + intercept).T
        ends = [v * slope + intercept for v in _stored_range(ds)]
        lo, hi = min(lo, *ends), max(hi, *ends)
    thickness = _float_or_none(first.get("SliceThickness"))
    info = DicomSeries(uid=found.uid, description=found.description, folder=folder, files=files,
                       frames=[None] * len(files), headers=headers, positions=positions, orientation=orientation,
                       spacing=(float(spacing[0]), float(spacing[1])), slice_thickness=thickness,
                       slice_locations=[_float_or_none(ds.get("SliceLocation")) for ds in headers],
                       dtype=_holding_dtype(lo, hi))
    return array, _affine(orientation, spacing, positions), info


def _pixels(path: Path, ds: Any) -> np.ndarray:
    """Decode the pixel data of ``ds`` (read by :func:`_header`), then drop it from the kept header."""
    from pydicom.pixels import pixel_array

    if "PixelData" not in ds:
        raise InputError(path, "a DICOM image header without pixel data")
    try:
        stored = pixel_array(ds)
    except Exception as exc:
        raise InputError(path, f"cannot decode the DICOM pixel data ({_short(exc)})") from None
    del ds.PixelData
    return stored


def _per_frame(ds: Any, k: int, sequence: str) -> Any:
    """The item of a functional group for frame ``k`` (0-based): per-frame, else shared, else ``None``."""
    per_frame, shared = ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")
    for group in (per_frame[k] if per_frame else None, shared[0] if shared else None):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _read_enhanced(path: Path, header: Any) -> tuple[np.ndarray, np.ndarray, DicomSeries]:
    frames = _frames(header)
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(path, f"{header.SamplesPerPixel} samples per pixel; a volume must be greyscale")
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        raise InputError(path, f"a multi-frame file without per-frame geometry for its {frames} frames "
                               "(PerFrameFunctionalGroupsSequence)")
    positions, rescales = [], []
    orientation = spacing = None
    thickness = None
    for k in range(frames):
        where = f"frame {k + 1}"
        plane = _per_frame(header, k, "PlanePositionSequence")
        orient = _per_frame(header, k, "PlaneOrientationSequence")
        measures = _per_frame(header, k, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise InputError(path, f"{where} has no plane position, orientation or pixel measures")
        iop = _floats(orient.get("ImageOrientationPatient"), 6, path, f"{where}'s ImageOrientationPatient")
        ps = _floats(measures.get("PixelSpacing"), 2, path, f"{where}'s PixelSpacing")
        if orientation is None:
            orientation, spacing = iop, ps
            thickness = _float_or_none(measures.get("SliceThickness"))
        elif np.abs(iop - orientation).max() > GEOMETRY_TOLERANCE:
            raise InputError(path, f"{where}'s orientation {_fmt(iop)} differs from frame 1's {_fmt(orientation)}")
        elif np.abs(ps - spacing).max() > GEOMETRY_TOLERANCE:
            raise InputError(path, f"{where}'s pixel spacing {_fmt(ps)} differs from frame 1's {_fmt(spacing)}")
        positions.append(_floats(plane.get("ImagePositionPatient"), 3, path, f"{where}'s ImagePositionPatient"))
        transform = _per_frame(header, k, "PixelValueTransformationSequence")
        rescales.append(_rescale(transform if transform is not None else header))
    positions = np.asarray(positions)
    normal = np.cross(orientation[:3], orientation[3:])
    along = positions @ normal
    steps = np.diff(along)
    # frames that run monotonically keep their order (left-handed when against the normal, as ITK reads the file);
    # others are sorted along the normal
    if (steps > 0).all() or (steps < 0).all():
        order = np.arange(frames)
    else:
        order = np.argsort(along, kind="stable")
    positions = positions[order]
    names = [path] * frames
    _check_stack(path, names, positions, normal, frames=[int(k) + 1 for k in order])
    stored = _pixels(path, header)
    rows, cols = int(header.Rows), int(header.Columns)
    if stored.shape != (frames, rows, cols):
        raise InputError(path, f"pixel data of shape {stored.shape}, not {(frames, rows, cols)}")
    array = np.empty((cols, rows, frames), dtype=np.float32)
    lo, hi = np.inf, -np.inf
    for k, frame in enumerate(order):
        slope, intercept = rescales[frame]
        array[:, :, k] = (stored[frame].astype(np.float64) * slope + intercept).T
        ends = [v * slope + intercept for v in _stored_range(header)]
        lo, hi = min(lo, *ends), max(hi, *ends)
    info = DicomSeries(uid=str(header.get("SeriesInstanceUID", "")),
                       description=str(header.get("SeriesDescription", "") or ""), folder=path.parent, files=names, frames=[int(k) + 1 for k in order], headers=[header] * frames,
                       positions=positions, orientation=orientation, spacing=(float(spacing[0]), float(spacing[1])),
                       slice_thickness=thickness, slice_locations=[None] * frames, dtype=_holding_dtype(lo, hi),
                       enhanced=True)
    return array, _affine(orientation, spacing, positions), info


def _check_stack(where: Path, files: Sequence[Path], positions: np.ndarray, normal: np.ndarray,
                 frames: Sequence[int] | None = None) -> None:
    """Refuse positions (in volume order) that are not one regular stack along ``normal``."""

    def name(k: int) -> str:
        return f"frame {frames[k]}" if frames is not None else Path(files[k]).name

    along = positions @ normal
    steps = np.diff(along)
    sizes = np.abs(steps)
    same = np.flatnonzero(sizes < GEOMETRY_TOLERANCE)
    if same.size:
        k = int(same[0])
        raise InputError(where, f"{same.size + 1} slices share positions (e.g. {name(k)} and {name(k + 1)} at "
                                f"{along[k]:.3f} mm): several echoes, phases or volumes in one series; they cannot "
                                "make one volume")
    typical = float(np.median(sizes))
    off = np.flatnonzero(np.abs(sizes - typical) > STEP_TOLERANCE * typical)
    if off.size:
        k = int(off[0])
        ratio = sizes[k] / typical
        if round(ratio) >= 2 and abs(ratio - round(ratio)) < STEP_TOLERANCE * 10:
            raise InputError(where, f"missing slices: a step of {sizes[k]:.4g} mm between {name(k)} and "
                                    f"{name(k + 1)} where the others are {typical:.4g} mm "
                                    f"({int(round(ratio)) - 1} slice(s) absent)")
        raise InputError(where, f"uneven slice spacing: steps from {sizes.min():.4g} to {sizes.max():.4g} mm "
                                f"(e.g. {sizes[k]:.4g} mm between {name(k)} and {name(k + 1)}); resample it first")
    # positions must move along the normal only: an in-plane drift is a sheared stack (gantry tilt)
    offsets = positions - positions[0]
    drift = offsets - np.outer(offsets @ normal, normal)
    far = np.linalg.norm(drift, axis=1)
    limit = GEOMETRY_TOLERANCE * np.abs(offsets @ normal) + 0.01
    if (far > limit).any():
        k = int(np.argmax(far - limit))
        angle = np.degrees(np.arctan2(far[k], abs(float(offsets[k] @ normal))))
        raise InputError(where, f"the slices are sheared by {angle:.2f} deg (gantry tilt; {name(k)} is "
                                f"{far[k]:.3g} mm off the slice normal); resample it first")


def _affine(orientation: np.ndarray, spacing: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Voxel (I along a row, J down a column, K in volume order) -> RAS."""
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * spacing[1]  # along a row: the next column, PixelSpacing's second value
    lps[:3, 1] = orientation[3:] * spacing[0]
    # first to last over the steps, as ITK's series reader does: its sign follows the volume's order
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _stored_range(ds: Any) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _holding_dtype(lo: float, hi: float) -> np.dtype:
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


# ---- writing -------------------------------------------------------------------------------------------------
def series_description(source: str, target: str = "", model: str = "") -> str:
    """``synthetic T2 from <source> (medsynth <model>)``, within DICOM's 64 characters (the source shortened)."""
    head = f"synthetic {target.upper()} from ".replace("  ", " ") if target else "synthetic from "
    tail = f" (medsynth {model})" if model else " (medsynth)"
    room = 64 - len(head) - len(tail)
    if room < 8:  # a long model name: keep the words that say what the images are
        return (head + source)[:64].rstrip()
    return head + (source if len(source) <= room else source[:room - 3].rstrip() + "...") + tail


def _ds(value: float) -> str:
    """A number as a DICOM DS (at most 16 characters)."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4e}"


def quantise(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 voxels and the (slope, intercept) that map them back: the whole output range in 65535 steps (the
    intercept 0 when the range starts at or near 0, which reads plainly), the values exactly as written in DS."""
    lo, hi = float(array.min()), float(array.max())
    intercept = 0.0 if 0 <= lo <= 0.05 * hi else float(_ds(lo))
    span = hi - min(intercept, lo)
    # a slope a hair above span / 65535, so that the largest value still fits after DS rounding
    slope = float(_ds(span / 65535 * (1 + 1e-9))) if span > 0 else 1.0
    stored = np.clip(np.rint((array.astype(np.float64) - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def write_series(ref: Any, array: np.ndarray, out_dir: str | Path, description: str = "",
                 derivation: str = "", overwrite: bool = False) -> Path:
    """Write ``array`` (the input's (I, J, K) shape) as a new MR series in the source's study, atomically.

    Args:
        ref: the ``medsynth.io.Image`` read from the DICOM series (format ``"dicom"``).
        array: the voxels to write (float), in ``ref``'s order.
        out_dir: the folder for the new series' files; made whole beside it and renamed at the end.
        description: SeriesDescription (at most 64 characters; see :func:`series_description`).
        derivation: DerivationDescription (how the images were made).
        overwrite: replace an existing folder that holds only DICOM files.

    Raises:
        InputError: ``ref`` is not DICOM (no patient or study to copy), or the output folder is unusable.
    """
    out_dir = check_output_folder(out_dir, [ref.path], overwrite)
    if getattr(ref, "format", None) != "dicom":
        raise InputError(ref.path, "not a DICOM series: a DICOM output needs a source series whose patient, study "
                                   "and frame of reference it joins; write .nii.gz or .nrrd instead")
    info: DicomSeries = ref.native
    array = np.asarray(array, dtype=np.float32)
    if array.shape != ref.array.shape:
        raise ValueError(f"array shape {array.shape} differs from the reference {ref.array.shape}")
    if not np.isfinite(array).all():
        raise InputError(ref.path, "the output holds NaN or Inf voxels; nothing written")
    stored, slope, intercept = quantise(array)
    datasets = _derived_datasets(info, stored, slope, intercept, description, derivation, array)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = create_folder(out_dir.parent, prefix=f".{out_dir.name}.partial-")
    try:
        for k, ds in enumerate(datasets):
            ds.save_as(staging / f"MR{k + 1:05d}.dcm", enforce_file_format=True)
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def check_output_folder(out_dir: str | Path, inputs: Sequence[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse an output folder for a DICOM series that is a file, is or holds an input, or is not empty
    (without ``overwrite``; with it, only a folder of DICOM files alone is replaced). Nothing is written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "a DICOM series is written into a folder, and this is a file")
    if out_dir.suffix.lower() in (".gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".dcm"):
        raise InputError(out_dir, "a DICOM series is written into a folder: give a folder name, not a file name")
    resolved = out_dir.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise InputError(out_dir, "the output folder would replace the input")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError(out_dir, "the output folder exists and is not empty; use --overwrite to replace it")
        others = [p for p in out_dir.iterdir() if not (p.is_file() and p.suffix.lower() in DICOM_SUFFIXES)]
        if others:
            raise InputError(out_dir, f"holds {others[0].name}, not a DICOM file: only a folder of DICOM files "
                                      "alone is replaced, even with --overwrite")
    return out_dir


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder onto ``out_dir``; an old one is moved aside first and removed after."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = create_folder(out_dir.parent, prefix=f".{out_dir.name}.old-")
        os.replace(out_dir, old / out_dir.name)
        try:
            os.replace(staging, out_dir)
        except OSError:
            os.replace(old / out_dir.name, out_dir)  # the old series back in place
            raise
        finally:
            if out_dir.exists():
                shutil.rmtree(old, ignore_errors=True)
    else:
        # an empty folder is replaced by the rename itself
        os.replace(staging, out_dir)


def _copy(source: Any, target: Any, keywords: Sequence[str]) -> None:
    import copy

    for keyword in keywords:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])


def _derived_datasets(info: DicomSeries, stored: np.ndarray, slope: float, intercept: float, description: str,
                      derivation: str, values: np.ndarray) -> list[Any]:
    """One MR Image Storage dataset per slice: what all share is made once, then each gets its own."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    import medsynth

    header = info.header
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    common = Dataset()
    _copy(header, common, ("SpecificCharacterSet",))
    common.ImageType = ["DERIVED", "SECONDARY"]
    common.InstanceCreationDate, common.InstanceCreationTime = date, time
    common.SOPClassUID = MR_IMAGE_STORAGE
    common.ContentDate, common.ContentTime = date, time
    common.SeriesDate, common.SeriesTime = date, time
    common.Modality = "MR"
    common.Manufacturer = common.ManufacturerModelName = "medsynth"
    common.SoftwareVersions = str(getattr(medsynth, "__version__", "") or "")
    common.SeriesDescription = description[:64] or series_description(info.description)
    common.DerivationDescription = (derivation or f"synthetic image from series {info.uid}")[:1024]
    _copy(header, common, _PATIENT + _STUDY + _SERIES_KEPT)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
                    "MRAcquisitionType"):
        if keyword not in common:
            setattr(common, keyword, "")  # type 2: present, empty when unknown
    if "StudyInstanceUID" not in common:
        common.StudyInstanceUID = generate_uid()
    if not common.get("FrameOfReferenceUID"):
        common.FrameOfReferenceUID = generate_uid()
    common.SeriesInstanceUID = generate_uid()
    try:
        common.SeriesNumber = int(header.get("SeriesNumber")) + 1000
    except (TypeError, ValueError):
        common.SeriesNumber = 1000
    # the MR Image module: synthetic images have no sequence of their own ("RM": research mode)
    common.ScanningSequence, common.SequenceVariant, common.ScanOptions = "RM", "NONE", ""
    common.EchoTime = common.EchoTrainLength = ""
    common.RepetitionTime = ""  # type 2C (the sequence is neither EP nor SK): present, empty
    common.ImageOrientationPatient = [_ds(v) for v in info.orientation]
    common.PixelSpacing = [_ds(v) for v in info.spacing]
    if info.slice_thickness is not None:
        common.SliceThickness = _ds(info.slice_thickness)
    common.SamplesPerPixel, common.PhotometricInterpretation = 1, "MONOCHROME2"
    common.Rows, common.Columns = int(stored.shape[1]), int(stored.shape[0])
    common.BitsAllocated, common.BitsStored, common.HighBit, common.PixelRepresentation = 16, 16, 15, 0
    common.RescaleIntercept, common.RescaleSlope = _ds(intercept), _ds(slope)
    common.RescaleType = "US"  # unspecified units: a synthetic contrast
    foreground = values[values > values.min()] if (values > values.min()).any() else values.ravel()
    low, high = np.percentile(foreground, [0.5, 99.5])
    common.WindowCenter, common.WindowWidth = _ds((low + high) / 2), _ds(max(high - low, slope))
    normal = np.cross(info.orientation[:3], info.orientation[3:])
    source_class = str(header.get("SOPClassUID", ""))
    out = []
    for k in range(stored.shape[2]):
        source = info.headers[k]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.update(common)  # the shared elements themselves: none is changed below
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in info.positions[k]]
        location = info.slice_locations[k] if k < len(info.slice_locations) else None
        ds.SliceLocation = _ds(location if location is not None else float(info.positions[k] @ normal))
        # where each slice comes from: the source image (and frame) and its series
        reference = Dataset()
        reference.ReferencedSOPClassUID = str(source.get("SOPClassUID", source_class))
        reference.ReferencedSOPInstanceUID = str(source.get("SOPInstanceUID", ""))
        if info.frames[k] is not None:
            reference.ReferencedFrameNumber = info.frames[k]
        ds.SourceImageSequence = DicomSequence([reference])
        series_ref, instance = Dataset(), Dataset()
        series_ref.SeriesInstanceUID = info.uid
        instance.ReferencedSOPClassUID = reference.ReferencedSOPClassUID
        instance.ReferencedSOPInstanceUID = reference.ReferencedSOPInstanceUID
        series_ref.ReferencedInstanceSequence = DicomSequence([instance])
        ds.ReferencedSeriesSequence = DicomSequence([series_ref])
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        out.append(ds)
    return out
