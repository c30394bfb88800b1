"""medsynth.files: atomic writes and the multi-threaded gzip writer."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsynth.files import write_atomic, write_gzip


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_write_gzip_is_one_standard_member(tmp_path: Path, threads: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4, 700_001, dtype=np.uint8).tobytes() + bytes(300_000)
    path = write_gzip(tmp_path / "x.gz", data, threads=threads, chunk=64 << 10)
    raw = path.read_bytes()
    assert gzip.decompress(raw) == data
    # one member: a raw inflate of the body consumes it all and leaves exactly the 8-byte trailer
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    assert inflate.decompress(raw[10:]) == data and inflate.eof and len(inflate.unused_data) == 8
    assert zlib.crc32(data) == int.from_bytes(raw[-8:-4], "little")
    assert write_gzip(tmp_path / "empty.gz", b"").read_bytes() and gzip.decompress((tmp_path / "empty.gz").read_bytes()) == b""


def test_nifti_written_in_chunks_reads_in_nibabel_simpleitk_and_itk(tmp_path: Path) -> None:
    from medsynth.io import load_image, save_like

    affine = np.array([[0.9, 0, 0, -40.0], [0, 1.1, 0, 12.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    data = np.random.default_rng(1).normal(size=(70, 60, 160)).astype(np.float32)  # 2.7 MB: two chunks
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    out = save_like(load_image(src), data * 2, tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), data * 2)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).transpose(2, 1, 0), data * 2)
    np.testing.assert_array_equal(itk.array_from_image(itk.imread(str(out))).transpose(2, 1, 0), data * 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "a.json", "{}\n")
    write_atomic(path, b"[1]\n")
    assert path.read_text() == "[1]\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
