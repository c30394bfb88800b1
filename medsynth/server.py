"""HTTP inference server (``medsynth-serve``); its standard-library client is :mod:`medsynth.client`.

A GPU box loads its models once and translates volumes sent by 3D Slicer, scripts or pipelines:

- ``GET /health``: always open (no token needed); status, number of models, queue figures.
- ``GET /models``: for each model its name, domains, directions, axes, accepted file suffixes and config summary.
- ``POST /infer?model=NAME&direction=t1-to-t2&axis=axial&fuse=mean&dtype=float32`` with the volume in the
  multipart form field ``file`` (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, or a ``.zip`` of one DICOM series or
  one enhanced multi-frame DICOM file): answers the translated volume with the same geometry, in the upload's
  format (NIfTI ``.nii.gz`` for a zip) unless ``format=nii.gz|nii|nrrd|mha`` asks for another. ``model`` may be
  left out when one model is loaded; ``direction`` defaults to the model's first. A model calibrated by
  ``medsynth-calibrate`` applies its curve unless ``calibration=false`` asks for the network's output as it is. A
  model trained on bias-corrected volumes puts the input's field back on the translation unless
  ``bias_field=remove``.

Model names: ``NAME=PATH`` on the command line (or the keys of a dict given to :func:`create_app`) name a model
explicitly. Otherwise a model is named after its file's stem (``weights/brain_t1t2.pt`` -> ``brain_t1t2``), except
that a generic stem (``model``, ``last``, ``best``, ``latest``, ``final``) gives way to the run folder's name
(``runs/t1t2/model.pt`` or the folder ``runs/t1t2`` -> ``t1t2``).

Safety: the server binds to 127.0.0.1 unless told otherwise; with a token every route but ``/health`` needs
``Authorization: Bearer <token>``. Uploads are streamed to a temporary folder the server names itself (the upload's
file name only selects one of the accepted suffixes), the size limit is enforced while streaming, and the folder is
removed after the answer, whatever happened. A zip is unpacked there too, refusing absolute or ``..`` member paths,
links, and more than ``max_unzipped_mb`` unpacked. An upload that sends nothing for ``idle_timeout`` seconds gets
408 and its connection is closed; one whose client disconnects gives one log line. Translations run one at a time
per worker, in arrival order, from a bounded queue; when it is full the answer is 503 with ``Retry-After``.

FastAPI is optional at import time (the ``[server]`` extra); :func:`medsynth.client.remote_translate` needs only
the standard library, so it works in Slicer's Python without FastAPI, httpx or requests. The command line is
:mod:`medsynth.cli.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from medsynth.bias import BIAS_OUTPUTS
from medsynth.client import ARCHIVE_SUFFIX, SUFFIXES, UPLOAD_SUFFIXES, match_suffix, safe_stem
from medsynth.config import AXIS_CHOICES
from medsynth.errors import InputError
from medsynth.fusion import DEFAULT_FUSION, FUSIONS
from medsynth.inference import Translator

try:
    # Module level because FastAPI resolves the routes' string annotations in this module's globals. Optional
    # (the [server] extra): without it this module still imports, and create_app says what to install.
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from starlette.requests import ClientDisconnect
except ImportError:  # pragma: no cover - client-only installs
    FastAPI = None  # type: ignore[assignment,misc]

    class ClientDisconnect(Exception):  # type: ignore[no-redef]
        """Stands in for Starlette's, so that the middleware below still parses without FastAPI."""

log = logging.getLogger("medsynth.server")

DTYPES: tuple[str, ...] = ("float32", "input")
GENERIC_STEMS = frozenset({"model", "last", "best", "latest", "final"})
MODEL_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt")

_UNZIP_RATIO = 8  # default cap on what a zip upload unpacks to, as a multiple of the upload limit
_FORM_OVERHEAD = 1 << 20  # multipart headers and small extra fields allowed on top of the file size limit
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# --------------------------------------------------------------------------------------------------------------
# model names


def model_name(path: str | Path) -> str:
    """Name of a model file for URLs: its stem, or its run folder's name when the stem is generic.

    Example:
        >>> model_name("runs/t1t2/model.pt"), model_name("weights/brain_t1t2.pt")
        ('t1t2', 'brain_t1t2')
    """
    path = Path(path)
    stem = path.stem if path.suffix.lower() in MODEL_SUFFIXES else path.name
    if stem.lower() in GENERIC_STEMS and path.parent.name:
        return path.parent.name
    return stem


def resolve_model_path(path: str | Path) -> Path:
    """Check a model argument: a model file, or a run folder holding ``model.pt``. Raises InputError."""
    path = Path(path).expanduser()
    if path.is_dir():
        inner = path / "model.pt"
        if not inner.is_file():
            raise InputError(path, "folder has no model.pt (give the model file or a training run folder)")
        return inner
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    return path


def _name_models(models: Mapping[str, str | Path | None] | Sequence[str | Path] | None) -> dict[str, Path | None]:
    """Normalise create_app's ``models`` argument to ``{name: path}`` (None = the packaged default model)."""
    if models is None or len(models) == 0:
        return {"default": None}
    if isinstance(models, Mapping):
        named: dict[str, Path | None] = {}
        for name, path in models.items():
            if not _NAME_RE.match(name):
                raise InputError(name, "model names use letters, digits, '.', '_' and '-' (at most 100)")
            named[name] = None if path is None else resolve_model_path(path)
        return named
    named = {}
    for raw in models:
        path = resolve_model_path(raw)
        name = model_name(raw if Path(raw).is_dir() else path)
        if name in named:
            raise InputError(raw, f"model name {name!r} is already used by {named[name]}; name it with NAME=PATH")
        named[name] = path
    return named


def parse_model_specs(values: Sequence[str] | None) -> dict[str, Path | None]:
    """``medsynth-serve --model`` values, ``PATH`` or ``NAME=PATH``, to ``{name: path}``; raises InputError.

    Checked before anything loads, so that a typo fails at once."""
    if not values:
        return {}
    named: dict[str, Path | None] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and not Path(value).exists() and _NAME_RE.match(name):
            path = resolve_model_path(rest)
        else:
            path = resolve_model_path(value)
            name = model_name(value if Path(value).is_dir() else path)
        if name in named:
            raise InputError(value, f"model name {name!r} is already used by {named[name]}; name it with NAME=PATH")
        named[name] = path
    return named


# --------------------------------------------------------------------------------------------------------------
# the GPU queue


class GpuQueue:
    """Runs translations on ``workers`` threads in arrival order, holding at most ``queue_size`` waiting jobs.

    The worker threads own the GPU; the event loop only uploads and answers. ``try_submit`` returns None when
    ``workers + queue_size`` jobs are already pending, which the server answers with 503.
    """

    def __init__(self, workers: int = 1, queue_size: int = 8, initializer: Callable[[], None] | None = None) -> None:
        if workers < 1 or queue_size < 0:
            raise ValueError("workers must be >= 1 and queue_size >= 0")
        self.workers = workers
        self.queue_size = queue_size
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="medsynth-gpu", initializer=initializer
        )
        self._lock = threading.Lock()
        self._pending = 0  # submitted, not finished (running + waiting)
        self._running = 0
        self._done = 0
        self._mean_s = 1.0  # running mean job time, only for the Retry-After estimate

    def try_submit(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        """Queue ``fn(*args)``; None when the queue is full."""
        with self._lock:
            if self._pending >= self.workers + self.queue_size:
                return None
            self._pending += 1

        def job() -> Any:
            start = time.perf_counter()
            with self._lock:
                self._running += 1
            try:
                return fn(*args)
            finally:
                seconds = time.perf_counter() - start
                with self._lock:
                    self._running -= 1
                    self._done += 1
                    self._mean_s += (seconds - self._mean_s) / min(self._done, 20)

        def release(_: Future) -> None:
            # A done callback, not a finally in job(): a job cancelled before it started must free its slot too.
            with self._lock:
                self._pending -= 1

        future = self._pool.submit(job)
        future.add_done_callback(release)
        return future

    def full(self) -> bool:
        """True when a job submitted now would be refused."""
        with self._lock:
            return self._pending >= self.workers + self.queue_size

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time to drain the current queue, at least 1."""
        with self._lock:
            return max(1, math.ceil(self._mean_s * self._pending / self.workers))

    def stats(self) -> dict[str, int]:
        """Running and waiting jobs, and how many fit."""
        with self._lock:
            return {
                "running": self._running,
                "waiting": self._pending - self._running,
                "capacity": self.workers + self.queue_size,
                "done": self._done,
            }

    def shutdown(self) -> None:
        """Stop accepting work and let running jobs finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------------
# request plumbing (no FastAPI needed here)


class _Reject(Exception):
    """An answer with a 4xx/5xx status and a one-line message."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def _too_large(limit: int) -> _Reject:
    return _Reject(413, f"upload larger than the server's limit of {round(limit / 2**20, 3):g} MB")


class _Upload:
    """Streams the multipart field ``file`` into ``folder/input<suffix>``, enforcing the size limit."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.too_large = _too_large(limit)
        self.path: Path | None = None
        self.client_name = ""
        self.suffix = ""
        self.size = 0
        self.ended = False
        self._file: Any = None
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._field = self._value = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header  # the optional [server] extra

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != b"file":
            return  # other fields are read and ignored (they count towards the body limit)
        if self.path is not None:
            raise _Reject(422, "send one volume per request (the form has two 'file' fields)")
        name = options.get(b"filename", b"").decode("utf-8", errors="replace")
        suffix = match_suffix(name, UPLOAD_SUFFIXES)
        if suffix is None:
            shown = safe_stem(name, None) if name else "the 'file' field"
            raise _Reject(400, f"{shown}: not a supported image file; send one of {', '.join(SUFFIXES)} or a "
                               f"{ARCHIVE_SUFFIX} of one DICOM series")
        self.client_name = safe_stem(name, suffix) + suffix
        self.suffix = suffix
        self.path = self.folder / f"input{suffix}"
        self._file = open(self.path, "wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            return
        self.size += end - start
        if self.size > self.limit:
            raise self.too_large
        # A plain write on the event loop: chunks are small (<= 64 KiB) and a local disk takes them at once.
        self._file.write(data[start:end])

    def _part_end(self) -> None:
        self.close()

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def _receive_upload(request: Any, folder: Path, limit: int) -> _Upload:
    """Read the request body into ``folder``; raises _Reject for every kind of bad upload."""
    # python-multipart: the optional [server] extra, like FastAPI
    from python_multipart import MultipartParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise _Reject(422, "expected a multipart/form-data body with the volume in the form field 'file'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
        # Refused before reading; _AccessLog drains the body so that the client still gets this answer.
        raise _too_large(limit)
    upload = _Upload(folder, limit)
    try:
        parser = MultipartParser(options[b"boundary"], upload.callbacks())
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + _FORM_OVERHEAD:
                raise upload.too_large
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise _Reject(400, f"malformed multipart body: {exc}") from None
    finally:
        upload.close()
    if upload.path is None:
        raise _Reject(422, "missing form field 'file' with the volume")
    if not upload.ended:
        raise _Reject(400, f"{upload.client_name}: upload incomplete (multipart body ended early)")
    if upload.size == 0:
        raise _Reject(400, f"{upload.client_name}: empty file")
    return upload


def _translate_job(
    translator: Any,
    in_path: Path,
    out_path: Path,
    options: dict[str, Any],
    client_name: str,
    unzip_limit: int,
) -> None:
    """Runs on a GPU worker thread; turns every failure into a _Reject with a message for the client.

    A zip upload is unpacked here first (into ``series/`` beside it, at most ``unzip_limit`` bytes) and its
    folder read as one DICOM series by :func:`medsynth.io.load_image`.
    """
    def expect(path: Path, seconds: float) -> None:
        log.info("translating %s: expected about %.1f s", client_name, seconds)

    try:
        if in_path.name.lower().endswith(ARCHIVE_SUFFIX):
            in_path = unzip_series(in_path, in_path.parent / "series", unzip_limit, client_name)
        translator.translate_file(in_path, out_path, on_start=expect, **options)
    except _Reject:
        raise
    except InputError as exc:
        # The message names the server's temporary file; the client knows its file by its own name.
        raise _Reject(400, f"{client_name}: {_scrub(exc.problem, in_path, client_name)}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        problem = _scrub(str(exc), in_path, client_name)
        raise _Reject(400, f"{client_name}: corrupt or truncated file ({problem})") from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            _empty_cuda_cache()
            log.error("out of GPU memory translating %s (%s)", client_name, exc)
            raise _Reject(500, f"{client_name}: out of GPU memory on the server; send a smaller volume") from None
        log.exception("translation of %s failed", client_name)
        problem = f"internal error while translating ({type(exc).__name__}); see the server log"
        raise _Reject(500, f"{client_name}: {problem}") from None


# at most this many files in an uploaded zip: a series has one file per slice, rarely more than a few thousand
_ZIP_MAX_FILES = 20_000
# skipped: what archivers add beside the data (macOS resource forks, folder settings), hidden files (which the
# series reader ignores too) and a DICOMDIR index
_ZIP_JUNK = re.compile(r"(^|/)(__MACOSX/|\.[^/]*$|Thumbs\.db$|DICOMDIR$)", re.IGNORECASE)


def unzip_series(archive: Path, folder: Path, limit: int, client_name: str = "") -> Path:
    """Unpack an uploaded zip's files into ``folder`` (flat: one folder holding the series), safely.

    Refused, before anything is written: a file that is not a zip, members with an absolute path, a drive letter
    or ``..``, links, encrypted members, more than ``_ZIP_MAX_FILES`` files, or more than ``limit`` bytes unpacked
    (also counted while unpacking, so a member whose header understates its size cannot get past it). The
    members' folders are dropped (DICOM readers order slices by their headers, not their names); a repeated name
    gets a numbered prefix.

    Returns:
        ``folder``.

    Raises:
        _Reject: 400 for a bad or unsafe zip, 413 past ``limit``; the message names the upload, not the server's
            files.
    """
    import stat
    import zipfile

    name = client_name or archive.name
    too_big = _Reject(413, f"{name}: unpacks to more than the server's limit of {round(limit / 2**20, 3):g} MB")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            declared = 0
            for info in zf.infolist():
                member = info.filename.replace("\\", "/")
                if member.startswith("/") or re.match(r"^[A-Za-z]:", member) or ".." in member.split("/"):
                    raise _Reject(400, f"{name}: unsafe path {_short_name(member)} in the zip (absolute or with '..')")
                if info.is_dir() or _ZIP_JUNK.search(member):
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise _Reject(400, f"{name}: {_short_name(member)} in the zip is a link; send the files themselves")
                if info.flag_bits & 0x1:
                    raise _Reject(400, f"{name}: {_short_name(member)} in the zip is encrypted")
                declared += info.file_size
                if declared > limit:
                    raise too_big
                members.append(info)
            if not members:
                raise _Reject(400, f"{name}: the zip holds no files")
            if len(members) > _ZIP_MAX_FILES:
                raise _Reject(400, f"{name}: the zip holds {len(members)} files; at most {_ZIP_MAX_FILES}")
            folder.mkdir(parents=True, exist_ok=True)
            used: set[str] = set()
            written = 0
            for index, info in enumerate(members):
                base = re.sub(r"[^A-Za-z0-9._-]+", "_", info.filename.replace("\\", "/").rsplit("/", 1)[-1])
                base = base.lstrip(".") or "file"
                if base.lower() in used:
                    base = f"{index:05d}_{base}"
                used.add(base.lower())
                with zf.open(info) as source, open(folder / base, "wb") as target:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > limit:
                            raise too_big
                        target.write(chunk)
    except _Reject:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # BadZipFile: not a zip, truncated, or a CRC mismatch; NotImplementedError: an unsupported compression
        problem = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise _Reject(400, f"{name}: not a readable zip archive ({problem})") from None
    return folder


def _short_name(text: str, width: int = 80) -> str:
    """A member name or message for a one-line answer: quoted, control characters removed, cut to ``width``."""
    text = re.sub(r"[\x00-\x1f\x7f]", "?", text)
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _scrub(message: str, in_path: Path, client_name: str) -> str:
    """Replace the server's temporary paths in a message by the client's file name."""
    return message.replace(str(in_path), client_name).replace(str(in_path.parent), "")


def _empty_cuda_cache() -> None:
    try:
        torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort only
        pass


def _thread_setup(threads: int | None) -> Callable[[], None] | None:
    """Worker-thread initializer that sets torch's CPU thread count (OpenMP's is per calling thread)."""
    if threads is None:
        return None
    if threads < 1:
        raise ValueError("threads must be >= 1")

    def setup() -> None:
        torch.set_num_threads(threads)

    return setup


def _remove_later(folder: Path, future: Future | None) -> None:
    """Remove a request folder now, or when its still running job ends (never pull files from under it)."""
    if future is not None and not future.done():
        future.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
    else:
        shutil.rmtree(folder, ignore_errors=True)


class _IdleUpload(_Reject):
    """The client sent no part of its request body for ``idle_timeout`` seconds: answered 408, then closed."""

    def __init__(self, idle_timeout: float) -> None:
        super().__init__(408, f"no data received for {idle_timeout:g} s; upload abandoned",
                         headers={"Connection": "close"})


class _AccessLog:
    """ASGI middleware: one log line per request (method, path, status, bytes in/out, seconds).

    It also reads and discards the rest of a request body that the app answered without reading (401, 404, 413,
    ...), up to ``_DRAIN_CAP`` bytes, before the answer goes out: a client that sends ``Connection: close`` (urllib
    does) would otherwise see the connection reset under its unsent body instead of the answer.

    Uvicorn has no timeout while a request body is read (``timeout_keep_alive`` only runs between requests), so a
    client that sends headers and part of a body and then nothing would hold its connection, its request folder
    and its handler forever. Every read of the body here waits at most ``idle_timeout`` seconds for the next
    chunk; past that the read raises :class:`_IdleUpload` (the route answers 408 with ``Connection: close``, and
    uvicorn then closes the connection). A client that disconnects mid-upload gives one log line, not a traceback.
    """

    def __init__(self, app: Any, idle_timeout: float | None = None) -> None:
        self.app = app
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"in": 0, "out": 0, "status": 0, "length": 0, "body_done": not _declares_body(scope),
                "aborted": False, "idle": False}

        async def counting_receive() -> dict:
            if seen["body_done"] or self.idle_timeout is None:
                # after the body, receive() waits for the disconnect, which may rightly take as long as the answer
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.idle_timeout)
                except asyncio.TimeoutError:
                    seen["body_done"] = seen["idle"] = True  # stop reading: nothing more is waited for
                    raise _IdleUpload(self.idle_timeout) from None
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    seen["body_done"] = True
            else:  # http.disconnect
                seen["aborted"] = not seen["body_done"]
                seen["body_done"] = True
            return message

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                if not seen["body_done"] and _declared_length(scope) <= _DRAIN_CAP:
                    with contextlib.suppress(_IdleUpload):  # a stalled client gets the answer it has earned
                        while not seen["body_done"] and seen["in"] <= _DRAIN_CAP:
                            await counting_receive()
                if seen["idle"] or not seen["body_done"]:
                    # the rest of the body is not read: the connection cannot carry another request
                    headers = list(message.get("headers", []))
                    if not any(key.lower() == b"connection" for key, _ in headers):
                        message = {**message, "headers": [*headers, (b"connection", b"close")]}
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"content-length" and value.isdigit():
                        seen["length"] = int(value)
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend":
                seen["out"] += seen["length"]
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except ClientDisconnect:
            if not seen["aborted"]:
                raise
            # the client went away mid-upload: nobody to answer, nothing to report but the line below
        except _IdleUpload as exc:
            # raised outside the /infer route's own handling (which answers 408 itself): answer it here
            if seen["status"]:
                raise
            body = json.dumps({"detail": exc.detail}).encode("utf-8")
            await counting_send({"type": "http.response.start", "status": 408, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await counting_send({"type": "http.response.body", "body": body})
        finally:
            path = scope.get("path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            peer = _peer(scope)
            declared = _header(scope, b"content-length")
            of = f" of {declared.decode('latin-1')}" if declared and declared.isdigit() else ""
            if seen["aborted"]:
                log.warning("upload from %s aborted after %d%s bytes (%s %s)", peer, seen["in"], of,
                            scope.get("method", "?"), path)
            elif seen["idle"]:
                log.warning("upload from %s idle for %g s after %d%s bytes: answered %d, connection closed (%s %s)",
                            peer, self.idle_timeout, seen["in"], of, seen["status"] or 500,
                            scope.get("method", "?"), path)
            else:
                log.info(
                    "%s %s %d in=%dB out=%dB %.3fs",
                    scope.get("method", "?"),
                    f"{path}?{query}" if query else path,
                    seen["status"] or 500,
                    seen["in"],
                    seen["out"],
                    time.perf_counter() - start,
                )


_DRAIN_CAP = 64 << 20  # an unread body larger than this is not drained; its client may see a reset instead


def _peer(scope: dict) -> str:
    """``host:port`` of the client, for log lines."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown client"


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def _declares_body(scope: dict) -> bool:
    return _declared_length(scope) > 0 or _header(scope, b"transfer-encoding") is not None


def _declared_length(scope: dict) -> int:
    """The request's Content-Length (0 when absent: a chunked body is drained up to the cap)."""
    value = _header(scope, b"content-length") or b""
    return int(value) if value.isdigit() else 0


# --------------------------------------------------------------------------------------------------------------
# the app


def _config_summary(translator: Any) -> dict[str, Any]:
    """The model's config summary, from ``Translator.info()`` when the core provides it."""
    info = getattr(translator, "info", None)
    if callable(info):
        try:
            summary = dict(info())
        except Exception:  # the listing must not fail because of one odd model
            log.exception("Translator.info() failed")
        else:
            if "source" in summary:  # the file name only: clients need not learn the server's folders
                summary["source"] = Path(str(summary["source"])).name
            return summary
    summary: dict[str, Any] = {}
    for attr in ("device",):
        if hasattr(translator, attr):
            summary[attr] = str(getattr(translator, attr))
    return summary


def create_app(
    models: Mapping[str, str | Path | None] | Sequence[str | Path] | None = None,
    *,
    device: str = "auto",
    token: str | None = None,
    max_upload_mb: float = 512,
    queue_size: int = 8,
    workers: int = 1,
    tmp_dir: str | Path | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    precision: str = "auto",
    idle_timeout: float | None = 30.0,
    max_unzipped_mb: float | None = None,
) -> FastAPI:
    """Build the FastAPI app; models are loaded now and stay on the device for the app's lifetime.

    Args:
        models: ``{name: path}``, or paths named by :func:`model_name`; None or empty = the packaged default
            model, named ``default``. A path may be a model file or a run folder holding ``model.pt``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        token: when given, every route but ``/health`` needs ``Authorization: Bearer <token>``.
        max_upload_mb: largest accepted upload (413 beyond it, checked while streaming).
        queue_size: translations that may wait behind the running ones; more get 503 with Retry-After.
        workers: translations that run at the same time (threads sharing the loaded models).
        tmp_dir: where per-request folders go (created if missing, left in place); default a private folder
            removed at shutdown.
        batch_size: slices per forward pass (default: the Translator's, 8 on CPU and 64 on CUDA).
        precision: ``auto`` (bf16 on CUDA and on CPUs with native bf16), ``bf16`` or ``fp32``.
        threads: CPU threads per translation (``torch.set_num_threads`` in each worker); default torch's. On a
            CPU-only server keep it below the core count: a thread team that must share its cores with the
            event loop (and other processes) waits for the scheduler at every layer.
        idle_timeout: seconds a client may send nothing while its upload is incomplete; past that it gets 408
            and its connection is closed. None waits forever (not for a server others can reach).
        max_unzipped_mb: most bytes a zip upload (a DICOM series) may unpack to (413 beyond it); default
            ``_UNZIP_RATIO`` (8) times ``max_upload_mb``.

    Returns:
        The app; ``app.state.gpu_queue`` (a :class:`GpuQueue`), ``app.state.translators`` and
        ``app.state.tmp_root`` are there for monitoring and tests.

    Raises:
        InputError: a model path is missing or not a medsynth model.
    """
    if FastAPI is None:
        raise ImportError("medsynth-serve needs FastAPI and uvicorn: pip install 'medsynth[server]'")
    from starlette.responses import FileResponse  # part of FastAPI, the optional [server] extra

    if max_upload_mb <= 0:
        raise ValueError("max_upload_mb must be positive")
    if idle_timeout is not None and idle_timeout <= 0:
        raise ValueError("idle_timeout must be positive (or None to wait forever)")
    limit = int(max_upload_mb * 2**20)
    unzip_limit = int((max_unzipped_mb or _UNZIP_RATIO * max_upload_mb) * 2**20)
    named = _name_models(models)
    translators = {
        name: Translator.from_file(path, device=device, batch_size=batch_size, precision=precision, threads=threads)
        for name, path in named.items()
    }
    gpu = GpuQueue(workers=workers, queue_size=queue_size, initializer=_thread_setup(threads))
    own_tmp = tmp_dir is None
    tmp_root = Path(tempfile.mkdtemp(prefix="medsynth-serve-")) if own_tmp else Path(tmp_dir)
    tmp_root.mkdir(parents=True, exist_ok=True)

    class TempFileResponse(FileResponse):
        """A FileResponse that removes its request folder however the send ends (even on disconnect)."""

        def __init__(self, path: Path, folder: Path, filename: str) -> None:
            super().__init__(path, media_type="application/octet-stream", filename=filename)
            self.folder = folder

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        devices = sorted({str(getattr(t, "device", device)) for t in translators.values()})
        log.info(
            "models: %s; device %s; queue %d; workers %d; threads %s; upload limit %g MB; upload idle timeout %s",
            ", ".join(translators), ", ".join(devices), queue_size, workers, threads or "default", max_upload_mb,
            "none" if idle_timeout is None else f"{idle_timeout:g} s",
        )
        yield
        gpu.shutdown()
        if own_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)

    app = FastAPI(title="medsynth", summary="CycleGAN image translation for medical volumes", lifespan=lifespan)
    app.state.gpu_queue = gpu
    app.state.translators = translators
    app.state.tmp_root = tmp_root
    app.add_middleware(_AccessLog, idle_timeout=idle_timeout)
    expected = token.encode("utf-8") if token else None

    def check_token(request: Request) -> None:
        if expected is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guessed token was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8"), expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def pick(model: str | None) -> tuple[str, Any]:
        if model is None:
            if len(translators) == 1:
                return next(iter(translators.items()))
            raise HTTPException(422, f"several models are loaded; choose one with ?model= ({', '.join(translators)})")
        if model not in translators:
            raise HTTPException(404, f"unknown model {model!r}; loaded: {', '.join(translators)}")
        return model, translators[model]

    def busy() -> HTTPException:
        wait = gpu.retry_after()
        return HTTPException(503, f"server busy: queue full; retry in {wait} s", headers={"Retry-After": str(wait)})

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and load; open even when a token is set (it names no model and takes no input)."""
        return {"status": "ok", "models": len(translators), "queue": gpu.stats()}

    @app.get("/estimate", dependencies=[Depends(check_token)])
    def estimate(
        shape: str = Query(..., description="volume shape, e.g. 240x240x155"),
        model: str | None = Query(None, description="model name (see /models); optional with one model"),
        axis: Literal[AXIS_CHOICES] = Query("axial"),  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        """Expected seconds to translate a volume of this shape here (a measured rate of this machine), without
        the upload and the wait in the queue."""
        name, translator = pick(model)
        try:
            dims = [int(n) for n in shape.lower().split("x")]
        except ValueError:
            dims = []
        if not 2 <= len(dims) <= 3 or min(dims) < 1:
            raise HTTPException(422, f"shape {shape!r}: give sizes like 240x240x155")
        return {"model": name, "shape": dims, "axis": axis, "seconds": float(translator.estimate_seconds(dims, axis)),
                "queue": gpu.stats()}

    @app.get("/models", dependencies=[Depends(check_token)])
    def list_models() -> dict[str, Any]:
        """What each loaded model does and what it accepts."""
        return {
            "models": [
                {
                    "name": name,
                    "domains": list(t.domains),
                    "directions": list(t.directions),
                    "axes": list(AXIS_CHOICES),
                    "fuse": list(FUSIONS),
                    "suffixes": list(UPLOAD_SUFFIXES),
                    "max_upload_mb": max_upload_mb,
                    "config": _config_summary(t),
                }
                for name, t in translators.items()
            ]
        }

    @app.post("/infer", dependencies=[Depends(check_token)])
    async def infer(
        request: Request,
        model: str | None = Query(None, description="model name (see /models); optional with one model"),
        direction: str | None = Query(None, description="e.g. t1-to-t2; default: the model's first direction"),
        axis: Literal[AXIS_CHOICES] = Query("axial"),  # type: ignore[valid-type]
        fuse: Literal[FUSIONS] = Query(  # type: ignore[valid-type]
            DEFAULT_FUSION, description="how axis=all combines its three passes: mean, median, or detail (the "
                                        "axial pass with the other two's detail across slices)"),
        dtype: Literal["float32", "input"] = Query("float32", description="output voxel type"),
        output_format: Literal["nii.gz", "nii", "nrrd", "mha"] | None = Query(
            None, alias="format", description="answer's file format; default: the upload's (nii.gz for a zip)"),
        calibration: bool = Query(True, description="apply the model's output calibration curve (medsynth-calibrate),"
                                                    " if it carries one; false: the network's output as it is"),
        # Literal of a tuple is the Literal of its items: FastAPI checks the request against medsynth.bias's list
        bias_field: Literal[BIAS_OUTPUTS] = Query(  # type: ignore[valid-type]
            "restore", description="for a model trained on bias-corrected volumes (--bias-correction n4 or "
                                   "n4-peak): put the input's bias field back on the translation (restore) or not "
                                   "(remove)"),
    ) -> Any:
        """Translate the volume in the form field ``file`` (a volume file, or a zip of one DICOM series); answers
        it with the same geometry, in the upload's format unless ``format`` names another."""
        name, translator = pick(model)
        if direction is not None and direction.lower() not in translator.directions:
            choices = ", ".join(translator.directions)
            raise HTTPException(422, f"unknown direction {direction!r} for model {name!r}; use one of {choices}")
        if gpu.full():  # refuse before the upload; checked again below, since the queue may fill meanwhile
            raise busy()
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=tmp_root))
        future: Future | None = None
        try:
            upload = await _receive_upload(request, folder, limit)
            assert upload.path is not None
            if output_format is not None:
                out_suffix = f".{output_format}"
            else:
                out_suffix = ".nii.gz" if upload.suffix == ARCHIVE_SUFFIX else upload.suffix
            out_path = folder / f"output{out_suffix}"
            options = {"direction": direction, "axis": axis, "fuse": fuse, "dtype": dtype, "calibrate": calibration,
                       "bias_field": bias_field}
            future = gpu.try_submit(_translate_job, translator, upload.path, out_path, options, upload.client_name,
                                    unzip_limit)
            if future is None:
                raise busy()
            await asyncio.wrap_future(future)
            stem = safe_stem(upload.client_name, upload.suffix)
            response = TempFileResponse(out_path, folder, f"{stem}_translated{out_suffix}")
        except HTTPException:
            _remove_later(folder, future)
            raise
        except _Reject as exc:
            _remove_later(folder, future)
            raise HTTPException(exc.status, exc.detail, headers=exc.headers) from None
        except BaseException:
            _remove_later(folder, future)
            raise
        return response

    return app
