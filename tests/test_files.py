"""medsynth.files: atomic writes and the multi-threaded gzip writer."""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from pathlib import Path
from typing import Iterator

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


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask (process-wide, so restored whatever happens)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_gives_the_mode_the_umask_gives(tmp_path: Path, umask: int, make_volume) -> None:
    """Outputs are 0o666 and folders 0o777 less the umask, as ``open`` and ``mkdir`` make them: the temporary
    file an output is written to before its rename must not keep a private mode of its own."""
    import torch

    from medsynth.files import atomic_save
    from medsynth.io import load_image, save_like
    from medsynth.pictures import save_grid

    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    text = write_atomic(tmp_path / "reports" / "metrics.json", "{}\n")
    again = write_atomic(text, "[]\n")  # a replaced file takes the mode anew
    model = atomic_save({"weights": torch.zeros(3)}, tmp_path / "run" / "model.pt")
    volume = load_image(make_volume(tmp_path, "in.nii.gz", shape=(6, 7, 5)))
    nifti = save_like(volume, volume.array * 2, tmp_path / "converted" / "sub" / "out.nii.gz")
    mha = save_like(volume, volume.array, tmp_path / "converted" / "out.mhd")
    png = tmp_path / "samples" / "step_1.png"
    save_grid(png, [[torch.zeros(8, 8), torch.ones(8, 8)]])
    written = {"text": again, "atomic_save": model, "save_like nifti": nifti, "save_like mhd": mha,
               "save_like raw": mha.with_suffix(".raw"), "pictures png": png}
    assert {name: oct(_mode(p)) for name, p in written.items()} == {name: oct(file_mode) for name in written}
    for folder in (text.parent, model.parent, nifti.parent, nifti.parent.parent, png.parent):
        assert _mode(folder) == folder_mode, folder
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # no temporary file or staging folder left


def test_a_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    from medsynth.files import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    assert list(tmp_path.iterdir()) == []
