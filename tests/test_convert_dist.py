"""``torchrun ... -m medsynth convert IN/ OUT/``: files shared out across real gloo processes, existing outputs
skipped (counted), one summary for the whole job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsynth.cli.convert import main as convert_main

SUMMARY = re.compile(r"converted (\d+) of (\d+) files into \S+ \(skipped (\d+) existing, failed (\d+)"
                     r"(?:; (\d+) processes converted ([\d + ]+))?\)")


def _torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "medsynth", "convert", *args, "--threads", "1", "--progress", "none", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _summaries(text: str) -> list[re.Match]:
    return [m for m in (SUMMARY.search(line) for line in text.splitlines()) if m]


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Each output's (inode, mtime in ns): a file written again gets a new inode (written aside and renamed)."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.fixture
def six_volumes(tmp_path: Path, make_volume) -> Path:
    """Six small volumes, two of them in sub-folders with the same file name (their outputs must stay apart)."""
    folder = tmp_path / "in"
    for i in range(4):
        make_volume(folder, f"case{i}.nii.gz", shape=(16, 20, 12), seed=i)
    for case in ("a", "b"):
        make_volume(folder / case, "t1.nii.gz", shape=(16, 20, 12), seed=10 + ord(case))
    return folder


def test_two_processes_share_the_files_skip_existing_and_overwrite(tmp_path: Path, six_volumes: Path,
                                                                   tiny_model: Path) -> None:
    out = tmp_path / "out"
    first = _torchrun([str(six_volumes), str(out), "--model", str(tiny_model)])
    assert first.returncode == 0, first.stderr[-3000:]
    combined = first.stdout + first.stderr
    found = _summaries(combined)
    # one summary for the whole job, from rank 0, with both ranks' shares adding up
    assert len(found) == 1, combined[-3000:]
    converted, total, skipped, failed, world, shares = found[0].groups()
    assert (converted, total, skipped, failed, world) == ("6", "6", "0", "0", "2")
    assert sorted(int(n) for n in shares.split(" + ")) == [3, 3]
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert names == ["a/t1.nii.gz", "b/t1.nii.gz", "case0.nii.gz", "case1.nii.gz", "case2.nii.gz", "case3.nii.gz"]
    # nothing left half-written, and every output is the translation of its own input
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    for name in names:
        src = nib.load(six_volumes / name)
        assert nib.load(out / name).shape == src.shape
    stamps = _stamps(out)

    # a second run (an interrupted job started again) writes nothing: every output is skipped and counted
    second = _torchrun([str(six_volumes), str(out), "--model", str(tiny_model)])
    assert second.returncode == 0, second.stderr[-3000:]
    found = _summaries(second.stdout + second.stderr)
    assert len(found) == 1 and found[0].groups()[:5] == ("0", "6", "6", "0", "2")
    assert _stamps(out) == stamps

    # --overwrite writes every output again, each exactly once
    third = _torchrun([str(six_volumes), str(out), "--model", str(tiny_model), "--overwrite"])
    assert third.returncode == 0, third.stderr[-3000:]
    found = _summaries(third.stdout + third.stderr)
    assert len(found) == 1 and found[0].groups()[:5] == ("6", "6", "0", "0", "2")
    after = _stamps(out)
    assert sorted(after) == sorted(stamps) and all(after[k] != stamps[k] for k in stamps)


def test_a_rank_failing_a_file_fails_the_job(tmp_path: Path, six_volumes: Path, tiny_model: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), six_volumes / "zeros.nii.gz")
    out = tmp_path / "out"
    result = _torchrun([str(six_volumes), str(out), "--model", str(tiny_model)])
    # torchrun reports a failed job with its own status (1); each rank exits 2
    assert result.returncode != 0
    combined = result.stdout + result.stderr
    found = _summaries(combined)
    assert len(found) == 1 and found[0].groups()[:5] == ("6", "7", "0", "1", "2"), combined[-3000:]
    assert combined.count("zeros.nii.gz: all voxels are zero") == 1
    assert len(list(out.rglob("*.nii.gz"))) == 6


def test_one_process_skips_existing_outputs_and_counts_them(tmp_path: Path, six_volumes: Path, tiny_model: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "t1.nii.gz").write_bytes(b"an earlier output")
    args = [str(six_volumes), str(out), "--model", str(tiny_model), "--progress", "none", "--threads", "1"]
    assert convert_main(args) == 0
    err = capsys.readouterr().err
    assert "converted 5 of 6 files into" in err and "(skipped 1 existing, failed 0)" in err
    assert (out / "a" / "t1.nii.gz").read_bytes() == b"an earlier output"
    assert convert_main([*args, "--overwrite"]) == 0
    assert "converted 6 of 6 files" in capsys.readouterr().err
    assert nib.load(out / "a" / "t1.nii.gz").shape == (16, 20, 12)
