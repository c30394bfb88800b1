"""A standard-library client for ``medsynth-serve``: :func:`remote_translate` sends a volume, writes the answer.

Nothing here needs FastAPI, httpx or requests, so it works in 3D Slicer's Python (the Slicer module's "remote"
option uses it) and in any script. The accepted suffixes and the safe file-name stem are shared with the server.

Example:
    >>> remote_translate("http://gpu-box:8000", "t1.nii.gz", "t2.nii.gz", direction="t1-to-t2")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

from medsynth.errors import InputError

__all__ = ["ARCHIVE_SUFFIX", "SUFFIXES", "UPLOAD_SUFFIXES", "match_suffix", "post_infer", "remote_estimate",
           "remote_translate", "safe_stem", "zip_folder"]

#: Volume file suffixes accepted for upload (and answered in), longest first so ``.nii.gz`` wins over ``.nii``.
#: Header/data pairs (``.mhd``, ``.nhdr``) are left out: one upload is one file.
SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
#: A zip holding one DICOM series (or one enhanced multi-frame DICOM file); answered as NIfTI unless asked otherwise.
ARCHIVE_SUFFIX = ".zip"
UPLOAD_SUFFIXES: tuple[str, ...] = SUFFIXES + (ARCHIVE_SUFFIX,)


def match_suffix(name: str, suffixes: tuple[str, ...] = SUFFIXES) -> str | None:
    """Return the suffix among ``suffixes`` that ``name`` ends with (case-insensitive), or None."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    return None


def safe_stem(name: str, suffix: str | None) -> str:
    """A file-name-safe stem for messages and Content-Disposition; never used as a path."""
    base = re.split(r"[\\/]", name)[-1]
    if suffix and base.lower().endswith(suffix):
        base = base[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:100] or "volume"


def post_infer(
    url: str,
    in_path: str | Path,
    *,
    model: str | None = None,
    direction: str | None = None,
    axis: str = "axial",
    token: str | None = None,
    timeout: float = 600,
    fuse: str | None = None,
    dtype: str | None = None,
    output_format: str | None = None,
    calibration: bool = True,
    bias_field: str = "restore",
) -> Any:
    """Send one volume (or a zip of one DICOM series) to ``POST {url}/infer``, streaming it as multipart; returns
    the open urllib response. ``output_format`` (``nii.gz``, ``nii``, ``nrrd``, ``mha``) asks for the answer's
    format; by default it is the upload's (NIfTI for a zip). ``calibration=False`` asks for the network's output
    without the model's calibration curve (if it carries one). ``bias_field="remove"`` asks a model trained on
    bias-corrected volumes for the translation without the input's bias field put back.

    Low level: the caller reads and closes the response. Raises ``urllib.error.HTTPError`` (4xx/5xx) and
    ``urllib.error.URLError`` like :func:`urllib.request.urlopen`. :func:`remote_translate` is the friendly form.
    """
    in_path = Path(in_path)
    suffix = match_suffix(in_path.name, UPLOAD_SUFFIXES) or ""
    boundary = uuid.uuid4().hex
    filename = safe_stem(in_path.name, suffix) + suffix  # quoted-string safe: no quotes, no backslashes
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode("ascii")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    size = in_path.stat().st_size

    def body() -> Iterator[bytes]:
        yield head
        with open(in_path, "rb") as file:
            while chunk := file.read(1 << 20):
                yield chunk
        yield tail

    pairs = (("model", model), ("direction", direction), ("axis", axis), ("fuse", fuse), ("dtype", dtype),
             ("format", output_format))
    query = {key: value for key, value in pairs if value}
    if not calibration:
        # only when turned off: a server from before the switch answers the default request as it always did
        query["calibration"] = "false"
    if bias_field != "restore":
        query["bias_field"] = bias_field
    endpoint = url.rstrip("/") + "/infer" + (("?" + urllib.parse.urlencode(query)) if query else "")
    request = urllib.request.Request(
        endpoint,
        data=body(),
        method="POST",
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        },
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(request, timeout=timeout)


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The server's message from an error answer (FastAPI's ``{"detail": ...}``), else the reason phrase."""
    try:
        raw = error.read()
        detail = json.loads(raw.decode("utf-8"))["detail"]
    except Exception:
        return str(error.reason)
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}, ...]
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg', '')}" for item in detail
        )
    return str(detail)


def remote_translate(
    url: str,
    in_path: str | Path,
    out_path: str | Path,
    *,
    model: str | None = None,
    direction: str | None = None,
    axis: str = "axial",
    token: str | None = None,
    timeout: float = 600,
    fuse: str | None = None,
    dtype: str | None = None,
    calibration: bool = True,
    bias_field: str = "restore",
) -> Path:
    """Translate a volume on a ``medsynth-serve`` server; the standard library only (fits Slicer's Python).

    Args:
        url: the server, e.g. ``http://gpu-box:8000``.
        in_path: ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha`` file; or a folder holding one DICOM series (or one
            enhanced multi-frame DICOM file), zipped on the fly into a temporary file, or such a ``.zip``.
        out_path: where to write the answer (atomically). For a file, it must have the input's suffix, since the
            server answers in the input's format; for a DICOM series, any of ``.nii.gz``, ``.nii``, ``.nrrd``,
            ``.mha`` (the server is asked for that format).
        model, direction, axis, fuse, dtype: as in ``POST /infer``; model may be None when the server has one
            model, and None elsewhere means the server's default.
        calibration: False: the network's output without the model's calibration curve (``medsynth-calibrate``),
            if it carries one.
        bias_field: ``remove``: for a model trained on bias-corrected volumes (``--bias-correction n4``), the
            translation without the input's bias field put back (``restore``, the default, puts it back).
        token: the server's bearer token, if it has one.
        timeout: seconds to wait for the connection and for each read.

    Returns:
        ``out_path``.

    Raises:
        InputError: bad paths, an unreachable server, or any 4xx/5xx answer (with the server's message).

    Example:
        >>> remote_translate("http://127.0.0.1:8000", "t1.nii.gz", "t2.nii.gz", direction="t1-to-t2")  # doctest: +SKIP
    """
    in_path, out_path = Path(in_path), Path(out_path)
    output_format = None
    if in_path.is_dir() or match_suffix(in_path.name, UPLOAD_SUFFIXES) == ARCHIVE_SUFFIX:
        # a DICOM series: the server writes whichever volume format the output's name asks for
        out_suffix = match_suffix(out_path.name)
        if out_suffix is None:
            raise InputError(out_path, f"must end in one of {', '.join(SUFFIXES)}")
        output_format = out_suffix[1:]
        if not in_path.exists():
            raise InputError(in_path, "no such file or folder")
    else:
        suffix = match_suffix(in_path.name)
        if suffix is None:
            raise InputError(in_path, f"not a supported image file; the server accepts {', '.join(SUFFIXES)}, "
                                      "a DICOM series folder or a .zip of one")
        if not in_path.is_file():
            raise InputError(in_path, "no such file")
        if match_suffix(out_path.name) != suffix:
            raise InputError(out_path, f"must end in {suffix} like the input (the server answers in the input's "
                                       "format)")
    if not out_path.parent.is_dir():
        raise InputError(out_path.parent, "no such folder")
    archive = zip_folder(in_path) if in_path.is_dir() else None
    try:
        response = post_infer(
            url, archive or in_path, model=model, direction=direction, axis=axis, token=token, timeout=timeout,
            fuse=fuse, dtype=dtype, output_format=output_format, calibration=calibration, bias_field=bias_field,
        )
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        retry = exc.headers.get("Retry-After") if exc.headers else None
        hint = f" (retry after {retry} s)" if retry else ""
        raise InputError(in_path, f"server answered {exc.code}: {detail}{hint}") from None
    except urllib.error.URLError as exc:
        raise InputError(url, f"cannot reach the server: {exc.reason}") from None
    except (TimeoutError, socket.timeout, ConnectionError) as exc:
        raise InputError(url, f"no answer from the server: {exc}") from None
    finally:
        if archive is not None:  # the whole upload has been sent once post_infer returns
            shutil.rmtree(archive.parent, ignore_errors=True)
    part = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with response, open(part, "wb") as file:
            shutil.copyfileobj(response, file, 1 << 20)
        os.replace(part, out_path)
    except (TimeoutError, socket.timeout, ConnectionError) as exc:
        raise InputError(url, f"answer interrupted: {exc}") from None
    finally:
        part.unlink(missing_ok=True)
    return out_path


def zip_folder(folder: str | Path, archive: str | Path | None = None) -> Path:
    """Zip a folder's files (a DICOM series) for upload: sub-folders included, hidden files left out.

    Args:
        folder: the series folder; it is only read.
        archive: the zip to write; default ``<folder name>.zip`` in a new temporary folder (the caller removes
            that folder).

    Returns:
        The zip's path.

    Raises:
        InputError: the folder holds no files.
    """
    import zipfile

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(folder, "no files in this folder (expected one DICOM series)")
    if archive is None:
        archive = Path(tempfile.mkdtemp(prefix="medsynth-upload-")) / f"{safe_stem(folder.name, None)}.zip"
    archive = Path(archive)
    # level 1: most of what deflate saves on DICOM pixels for a fraction of the time of the default level
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in files:
            zf.write(path, path.relative_to(folder).as_posix())
    return archive


def remote_estimate(url: str, shape: tuple[int, ...] | list[int], *, model: str | None = None, axis: str = "axial",
                    token: str | None = None, timeout: float = 30) -> float:
    """The server's expected seconds for translating a volume of ``shape`` (``GET /estimate``), before sending it.

    Raises:
        InputError: the server cannot be reached or refuses.
    """
    query = {"shape": "x".join(str(int(n)) for n in shape), "axis": axis}
    if model:
        query["model"] = model
    request = urllib.request.Request(f"{url.rstrip('/')}/estimate?{urllib.parse.urlencode(query)}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return float(json.loads(response.read().decode("utf-8"))["seconds"])
    except urllib.error.HTTPError as exc:
        raise InputError(url, f"server answered {exc.code}: {_error_detail(exc)}") from None
    except urllib.error.URLError as exc:
        raise InputError(url, f"cannot reach the server: {exc.reason}") from None
    except (TimeoutError, socket.timeout, ConnectionError, ValueError, KeyError) as exc:
        raise InputError(url, f"no estimate from the server: {exc}") from None
