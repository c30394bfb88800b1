"""Atomic file writing: every output appears whole under its final name, or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success move it onto ``path`` with ``os.replace``.

    The temporary name ends with the same suffixes (``.nii.gz`` ...) so writers that choose the encoding
    from the name behave. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    tmp = create_file(path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def create_file(folder: str | os.PathLike[str], prefix: str = "", suffix: str = "") -> Path:
    """Create a new empty file with a unique name in ``folder``, mode ``0o666`` less the umask.

    ``tempfile.mkstemp`` would create it ``0o600``, and the mode survives the rename onto the output's name: every
    output would then be private whatever the user's umask says. ``O_EXCL`` keeps mkstemp's safety (never an
    existing file or a link planted under the name).
    """
    for _ in range(100):
        name = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"no free temporary name in {folder}")


def create_folder(folder: str | os.PathLike[str], prefix: str = "") -> Path:
    """Create a new empty folder with a unique name in ``folder``, mode ``0o777`` less the umask (what
    ``tempfile.mkdtemp``, whose folders are ``0o700``, does not give)."""
    for _ in range(100):
        name = Path(folder) / f"{prefix}{secrets.token_hex(4)}"
        try:
            name.mkdir(0o777)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name in {folder}")


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary name in the same folder, then rename: never a half-written file."""
    # torch is imported here, not at the top, so that the writers of text and images stay light
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_gzip(path: str | os.PathLike[str], data: bytes | memoryview, level: int = 1, threads: int | None = None,
               chunk: int = 2 << 20) -> Path:
    """Write ``data`` gzip-compressed to ``path``, the chunks deflated on ``threads`` threads at once.

    One standard gzip member (what ``gzip``, zlib's ``gzread``, nibabel and ITK read): each chunk is deflated on
    its own and ends on a sync flush, so the chunks' deflate blocks follow each other as one stream (the method
    of ``pigz``; a chunk does not refer back into the previous one, which costs well under 1 % of the size at
    2 MiB chunks). zlib releases the GIL while it compresses: on two cores the write takes about half as long.
    Level 1 is nibabel's default for ``.nii.gz``.
    """
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    view = memoryview(data).cast("B")
    parts = [view[i:i + chunk] for i in range(0, len(view), chunk)] or [view[:0]]

    def deflate(i: int) -> bytes:
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        return comp.compress(parts[i]) + comp.flush(zlib.Z_FINISH if i == len(parts) - 1 else zlib.Z_SYNC_FLUSH)

    if threads is None:
        from medsynth.devices import usable_cores

        threads = usable_cores()
    with ThreadPoolExecutor(max(1, min(threads, len(parts)))) as pool:
        crc = pool.submit(zlib.crc32, view)
        blocks = list(pool.map(deflate, range(len(parts))))
    # RFC 1952 header: deflate, no flags, no mtime, "fastest" (level 1), unknown OS
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + (b"\x04" if level == 1 else b"\x00") + b"\xff"
    trailer = struct.pack("<II", crc.result() & 0xFFFFFFFF, len(view) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(header)
        for block in blocks:
            f.write(block)
        f.write(trailer)
    return Path(path)
