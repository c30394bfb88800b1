"""Finding inputs, reading them with validation and clear errors, writing outputs atomically.

Every image inside medsynth is an :class:`Image`: a float32 array in the file's own voxel order (I, J, K) and
the voxel-to-RAS affine, plus the object it was read from so that an output can be written back with exactly
the input's geometry (for NIfTI the whole header, qform and sform with their codes included).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medsynth.dicom import dicom_files, is_multiframe, is_series_folder
from medsynth.errors import InputError
from medsynth.files import create_folder
from medsynth.image2d import IMAGE2D_SUFFIXES, is_dicom, is_image2d, read_image2d, write_image2d
from medsynth.image2d import natural_sort_key as natural_key

# nibabel and SimpleITK (~0.5 s each) are imported by the readers and writers that use them, so that the
# command-line parsers, which import this module, stay instant.

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
WRITABLE = VOLUME_SUFFIXES + IMAGE2D_SUFFIXES
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Image:
    """An image read from disk.

    Attributes:
        array: float32 voxels, shape (I, J, K); a 2D image is (rows, cols, 1).
        affine: 4x4 voxel-to-RAS (mm) matrix.
        path: where it was read from.
        format: ``"nifti"``, ``"itk"``, ``"dicom"`` (a series; native is a ``medsynth.dicom.DicomSeries``) or
            ``"image2d"``.
        native: what the reader returned (nibabel image, SimpleITK image, 2D metadata), used to write back.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    format: str
    native: Any = None

    @property
    def dtype(self) -> np.dtype:
        """The on-disk data type of the input (before scaling)."""
        if self.format == "nifti":
            return np.dtype(self.native.get_data_dtype())
        if self.format == "itk":
            import SimpleITK as sitk

            return np.dtype(sitk.GetArrayViewFromImage(self.native).dtype)
        if self.format == "dicom":
            return np.dtype(self.native.dtype)
        return np.dtype(np.uint16 if getattr(self.native, "bit_depth", 8) > 8 else np.uint8)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along I, J, K."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def suffix_of(path: str | Path) -> str:
    """The file's format suffix in lower case, ``.nii.gz`` counted as one."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def stem_of(path: str | Path) -> str:
    """The file name without its format suffix."""
    name = Path(path).name
    return name[: len(name) - len(suffix_of(path))] if suffix_of(path) else name


def _suffixes_for(what: str) -> tuple[str, ...]:
    if what == "volume":
        return VOLUME_SUFFIXES
    if what == "image2d":
        return IMAGE2D_SUFFIXES
    return VOLUME_SUFFIXES + IMAGE2D_SUFFIXES


def find_files(sources: Sequence[str | Path] | str | Path, what: str = "any") -> list[Path]:
    """Expand folders (searched recursively), glob patterns and file names into a sorted list of files.

    Args:
        sources: folders, glob patterns or files.
        what: ``"volume"``, ``"image2d"`` or ``"any"``: which suffixes a folder search collects.

    Raises:
        InputError: a source that does not exist or matches no image.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    suffixes = _suffixes_for(what)
    found: list[Path] = []
    for source in sources:
        text = str(source)
        path = Path(text).expanduser()
        if path.is_dir():
            # DICOM exports often have no suffix at all
            matches = [p for p in path.rglob("*") if p.is_file() and (
                suffix_of(p) in suffixes or (what != "volume" and not p.suffix and is_dicom(p)))]
            if what != "image2d":
                # a folder holding a DICOM series (or an enhanced multi-frame file) is one volume: the folder
                # replaces its DICOM files; DICOM files in other folders stay 2D images
                series = [d for d in (path, *(p for p in path.rglob("*") if p.is_dir())) if is_series_folder(d)]
                inside = {f for d in series for f in dicom_files(d)}
                matches = [p for p in matches if p not in inside] + series
            if not matches:
                raise InputError(path, f"no {_describe(what)} found in this folder ({', '.join(suffixes)})")
            found.extend(sorted(matches, key=natural_key))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            matches = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise InputError(text, "the pattern matches no file")
            found.extend(sorted(matches, key=natural_key))
        else:
            raise InputError(path, "no such file or folder")
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p, None)
    return list(unique)


def _describe(what: str) -> str:
    return {"volume": "volumes", "image2d": "2D images"}.get(what, "images")


#: how :func:`kind_of` names the two kinds of input in messages
KIND_NAMES = {"volume": "a 3D volume", "image2d": "a 2D image"}


def kind_of(path: str | Path) -> str:
    """``"image2d"`` for a file read as a 2D image (PNG, JPEG, TIFF, a DICOM file), else ``"volume"``.

    From the name (and a suffix-less file's DICOM preamble), without reading the image: cheap enough to check
    every input before any work.
    """
    if Path(path).is_dir() or is_multiframe(path):
        return "volume"  # a DICOM series folder, an enhanced multi-frame DICOM file
    return "image2d" if is_image2d(path) else "volume"


def kind_of_inputs(files: Sequence[str | Path]) -> str:
    """The one kind (:func:`kind_of`) of a set of training inputs; a mix of 2D images and volumes is refused.

    Raises:
        InputError: naming a file of the rarer kind (the 2D image when they are as many) and one of the other.
    """
    kinds: dict[str, list[Path]] = {}
    for f in files:
        kinds.setdefault(kind_of(f), []).append(Path(f))
    if len(kinds) < 2:
        return next(iter(kinds), "volume")
    odd = min(kinds, key=lambda k: (len(kinds[k]), k != "image2d"))
    other = "volume" if odd == "image2d" else "image2d"
    others = f"{len(kinds[other])} other inputs are {KIND_NAMES[other][2:]}s" if len(kinds[other]) > 1 else \
        f"the other input is {KIND_NAMES[other]}"
    raise InputError(kinds[odd][0], f"{KIND_NAMES[odd]}, and {others} (e.g. {kinds[other][0]}): train on volumes "
                                    "or on 2D images, not a mix")


def load_image(path: str | Path, expect: str = "any", allow_constant: bool = False,
               series: str | None = None) -> Image:
    """Read and validate an image.

    Args:
        path: a NIfTI, MHA/MHD/NRRD, PNG/JPEG/TIFF or DICOM file, a folder holding a DICOM series, or an enhanced
            multi-frame DICOM file (both read as one volume, see :mod:`medsynth.dicom`).
        expect: ``"volume"`` refuses 2D images (and volumes with a single slice), ``"any"`` takes both.
        allow_constant: accept an image of one value (a mask, a collapsed prediction being evaluated).
        series: the SeriesInstanceUID to read from a folder of several DICOM series.

    Raises:
        InputError: the file is missing, unreadable, not an image, 2D where a volume is expected, has more than
            one frame, or holds NaN/Inf or only zeros.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir() and not is_series_folder(path):
        raise InputError(path, "is a folder, not an image file (nor a folder of one DICOM series)")
    suffix = suffix_of(path)
    if path.is_dir() or is_multiframe(path):
        image = _load_dicom_series(path, series)
    elif suffix in NIFTI_SUFFIXES:
        image = _load_nifti(path)
    elif suffix in ITK_SUFFIXES:
        image = _load_itk(path)
    elif is_image2d(path):
        if expect == "volume":
            raise InputError(path, "a 2D image where a 3D volume is expected")
        image = _load_image2d(path)
    else:
        raise InputError(path, f"not a supported image file (expected one of {', '.join(VOLUME_SUFFIXES + IMAGE2D_SUFFIXES)})")
    if expect == "volume" and sum(s > 1 for s in image.array.shape) < 3:
        raise InputError(path, f"a 2D image (shape {tuple(image.array.shape)}) where a 3D volume is expected")
    validate_array(image.array, path, allow_constant)
    return image


def validate_array(array: np.ndarray, path: str | Path, allow_constant: bool = False) -> None:
    """Refuse arrays that no model can use: NaN/Inf voxels, all zeros, or (unless allowed) a constant value."""
    if array.size == 0:
        raise InputError(path, "the image is empty")
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(path, f"{int((~finite).sum())} voxels are NaN or Inf")
    lo, hi = float(array.min()), float(array.max())
    if allow_constant:
        return
    if lo == hi == 0:
        raise InputError(path, "all voxels are zero")
    if lo == hi:
        raise InputError(path, f"all voxels have the same value ({lo:g})")


def _squeeze_frames(data_shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """The 3D shape to use for a file's data shape; a singleton 4th (and 5th) dimension is dropped."""
    if len(data_shape) < 2:
        raise InputError(path, f"not an image: shape {data_shape}")
    if len(data_shape) == 2:
        return (*data_shape, 1)
    extra = data_shape[3:]
    if any(n != 1 for n in extra):
        raise InputError(path, f"a {len(data_shape)}D image with {int(np.prod(extra))} frames; give one 3D volume")
    return tuple(data_shape[:3])


def _load_nifti(path: Path) -> Image:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = _squeeze_frames(tuple(img.shape), path)
        # get_fdata applies scl_slope/scl_inter, so int16 with scaling comes in its real units
        array = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many kinds for corrupt or truncated files
        raise InputError(path, f"cannot read as NIfTI ({_short(exc)})") from None
    return Image(array=array, affine=np.asarray(img.affine, dtype=np.float64), path=path, format="nifti", native=img)


def _load_itk(path: Path) -> Image:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:
        raise InputError(path, f"cannot read as an ITK image ({_short(exc)})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel; give a scalar image")
    if img.GetDimension() > 3:
        size = img.GetSize()
        if any(n != 1 for n in size[3:]):
            raise InputError(path, f"a {img.GetDimension()}D image with {int(np.prod(size[3:]))} frames; give one 3D volume")
        extractor_size = list(size[:3]) + [0] * (img.GetDimension() - 3)
        img = sitk.Extract(img, extractor_size, [0] * img.GetDimension())
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0)).astype(np.float32)
    return Image(array=array, affine=itk_affine(img), path=path, format="itk", native=img)


def _load_dicom_series(path: Path, series: str | None) -> Image:
    from medsynth.dicom import read_series

    array, affine, info = read_series(path, series)
    return Image(array=array, affine=affine, path=path, format="dicom", native=info)


def _load_image2d(path: Path) -> Image:
    pixels, meta = read_image2d(path)
    row, col = meta.spacing
    # rows along I and columns along J keeps the picture as it is when a 2D domain takes "axial" slices
    affine = np.diag([float(row), float(col), 1.0, 1.0])
    return Image(array=np.asarray(pixels, np.float32)[:, :, None], affine=affine, path=path, format="image2d", native=meta)


def itk_affine(img: Any) -> np.ndarray:
    """Voxel-to-RAS affine of a 3D SimpleITK image (ITK works in LPS)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = img.GetOrigin()
    return _LPS_TO_RAS @ lps


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse an output that would overwrite an input, is a folder, has no writable file extension, or exists
    (without ``overwrite``). Nothing is written or created: callers check before any work.

    A name without an extension is taken only beside an input that has none either (a DICOM export), whose
    format it then keeps.
    """
    path = Path(path)
    inputs = [Path(source) for source in inputs]
    for source in inputs:
        if source.exists() and path.exists() and os.path.samefile(source, path):
            raise InputError(path, "the output would overwrite the input")
        if source.resolve() == path.resolve():
            raise InputError(path, "the output would overwrite the input")
    if path.is_dir():
        # one message whatever --overwrite says: a folder is never replaced by a file
        example = path / (inputs[0].name if inputs else "output.nii.gz")
        raise InputError(path, f"the output is a folder; give a file name, e.g. {example}")
    suffix = suffix_of(path)
    if suffix not in WRITABLE:
        if suffix:
            raise InputError(path, f"cannot write this format (use one of {', '.join(WRITABLE)})")
        if not inputs or any(suffix_of(source) for source in inputs):
            raise InputError(path, f"the output name has no file extension (use one of {', '.join(WRITABLE)})")
    if suffix in IMAGE2D_SUFFIXES and any(source.is_file() and kind_of(source) == "volume" for source in inputs):
        raise InputError(path, "a volume cannot be written as a 2D image; use .nii.gz, .nrrd or .mha")
    if path.exists() and not overwrite:
        raise InputError(path, "the output exists; use --overwrite to replace it")
    return path


def save_like(ref: Image, array: np.ndarray, path: str | Path, dtype: str | np.dtype | None = None,
              overwrite: bool = False) -> Path:
    """Write ``array`` with exactly the geometry of ``ref``, atomically (temporary name, then rename).

    The format follows ``path``'s suffix. NIfTI to NIfTI keeps the input's whole header (qform, sform, their
    codes, units); ITK formats keep origin, spacing and direction; a different volume format is written from
    the affine.

    Args:
        ref: the image whose geometry the output takes.
        array: voxels in ``ref``'s (I, J, K) order and shape.
        path: output file.
        dtype: ``None``/``"float32"`` for float32, ``"input"`` for the input's on-disk type (rounded, clipped).
        overwrite: replace an existing output.
    """
    path = check_output(path, [ref.path], overwrite)
    array = np.asarray(array, dtype=np.float32)
    if array.shape != ref.array.shape:
        raise ValueError(f"array shape {array.shape} differs from the reference {ref.array.shape}")
    target = np.dtype(np.float32) if dtype in (None, "float32") else (ref.dtype if dtype == "input" else np.dtype(dtype))
    # 2D formats store their own type and range (write_image2d), e.g. a CT DICOM's negative values
    if target.kind in "iu" and ref.format != "image2d":
        info = np.iinfo(target)
        array = np.clip(np.rint(array), info.min, info.max)
    suffix = suffix_of(path)
    if suffix in IMAGE2D_SUFFIXES and ref.format != "image2d":
        raise InputError(path, "a volume cannot be written as a 2D image; use .nii.gz, .nrrd or .mha")
    # folders made for this output are removed again if it fails: nothing is left behind
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    # everything is written into a hidden folder beside the output under its final name (a header with its
    # data file, .mhd/.raw or .nhdr/.raw, must name the data file it will have), then renamed into place;
    # made as the user's umask says, like the files written in it
    staging = create_folder(path.parent, prefix=f".{path.name}.partial-")
    tmp = staging / path.name
    done = False
    try:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(ref, array, target, tmp)
        elif suffix in ITK_SUFFIXES:
            _write_itk(ref, array, target, tmp)
        elif suffix in IMAGE2D_SUFFIXES or (not suffix and ref.format == "image2d"):
            _write_image2d(ref, array, tmp)
        else:
            raise InputError(path, f"cannot write this format (use one of {', '.join(WRITABLE)})")
        # data files first, the header (the file people open) last
        for part in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(part, path.parent / part.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created if not done else ():
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
                folder.rmdir()
    return path


def _write_nifti(ref: Image, array: np.ndarray, dtype: np.dtype, path: Path) -> None:
    import nibabel as nib

    if ref.format == "nifti":
        header = ref.native.header.copy()
        data = array.reshape(ref.native.shape).astype(dtype, copy=False)
        header.set_data_dtype(dtype)
        # affine=None keeps the header's qform and sform (and their codes) exactly as they were
        out = nib.Nifti1Image(data, None, header=header) if isinstance(ref.native, nib.Nifti1Image) else \
            nib.Nifti2Image(data, None, header=header)
        out.header.set_slope_inter(None, None)
    else:
        out = nib.Nifti1Image(array.astype(dtype), ref.affine)
        out.header.set_qform(ref.affine, code=1)
        out.header.set_sform(ref.affine, code=1)
        out.header.set_xyzt_units("mm", "sec")
    if path.name.lower().endswith(".nii.gz"):
        from medsynth.files import write_gzip

        # the single-file bytes nibabel would gzip itself, deflated on every core (half the write on two)
        write_gzip(path, out.to_bytes())
    else:
        nib.save(out, str(path))


def _write_itk(ref: Image, array: np.ndarray, dtype: np.dtype, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(dtype).transpose(2, 1, 0)))
    if ref.format == "itk":
        img.CopyInformation(ref.native)
    else:
        lps = _LPS_TO_RAS @ ref.affine
        spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
        img.SetSpacing(spacing.tolist())
        img.SetOrigin(lps[:3, 3].tolist())
        img.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    sitk.WriteImage(img, str(path))


def _write_image2d(ref: Image, array: np.ndarray, path: Path) -> None:
    if ref.format != "image2d":
        raise InputError(path, "a volume cannot be written as a 2D image; use .nii.gz, .nrrd or .mha")
    write_image2d(path, array[:, :, 0], ref.native)
