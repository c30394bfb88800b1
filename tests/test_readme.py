"""Every shell and Python block of README.md and docs/*.md runs as written, on a fresh copy of the project.

The copy holds what a clone holds (tracked files and new files git does not ignore) and gets its own virtual
environment, which sees the packages already installed here (``--system-site-packages``), so that the README's
own ``pip install`` lines run for real but download nothing new (and build medsynth without an isolated build
environment, ``PIP_NO_BUILD_ISOLATION=0``: the same package, without fetching setuptools for every install).
Blocks run in page order in one work folder (README first, then the docs pages by name), so a block may use what
an earlier block of its page wrote.

A line ``<!-- test: ... -->`` right above a block says how to treat it:

- ``skip: why``: not run (the test command itself; commands on a user's own data).
- ``shared-data``: run only where ``../shared/data`` sits beside the checkout (skipped elsewhere); the copy sees
  it at the same relative place.

``STEPS`` is set to a tiny number for blocks that train (they write ``--steps "${STEPS:-1400}"``), and ``PORT``
to a free port for blocks that serve.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block of a page."""

    page: str
    line: int
    lang: str
    code: str
    mark: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def page_blocks(path: Path) -> list[Block]:
    """The ``bash``/``python`` blocks of a Markdown page, with the marker line above each (if any)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        mark = _MARK.match(lines[start - 1]) if start else None
        if lang in ("bash", "sh", "python"):
            blocks.append(Block(str(path.relative_to(ROOT)), start + 1, lang, "\n".join(lines[start + 1:j]),
                                mark.group(1) if mark else ""))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [b for page in pages if page.exists() for b in page_blocks(page)]


BLOCKS = all_blocks()


def test_markers_are_known() -> None:
    """A misspelt marker would silently run (or skip) a block."""
    for block in BLOCKS:
        assert block.mark == "" or block.mark == "shared-data" or block.mark.startswith("skip:"), block.id


def test_first_two_readme_commands() -> None:
    """The README opens with the fresh-machine set-up: install + demo, then the test command CI runs."""
    first, second = [b for b in BLOCKS if b.page == "README.md"][:2]
    assert "pip install" in first.code and "medsynth-demo" in first.code
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.code.strip() in ci, "the README's test command must be exactly what .ci/run runs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    """A fresh copy of the project (as a clone has it) with its own virtual environment."""
    top = tmp_path_factory.mktemp("fresh")
    repo = top / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    if SHARED.is_dir():
        (top / "shared").symlink_to(SHARED)
    venv = top / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), STEPS="4",
               PORT=str(_free_port()), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_BUILD_ISOLATION="0", PYTHONDONTWRITEBYTECODE="1")
    return {"repo": repo, "env": env, "python": str(venv / "bin" / "python")}


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.mark.startswith("skip:")], ids=lambda b: b.id)
def test_block_runs(block: Block, workspace: dict) -> None:
    if block.mark == "shared-data" and not (SHARED / "data").is_dir():
        pytest.skip("../shared/data is absent")
    if block.lang == "python":
        cmd = [workspace["python"], "-c", block.code]
    else:
        cmd = ["bash", "-c", "set -euo pipefail\n" + block.code]
    start = time.monotonic()
    run = subprocess.run(cmd, cwd=workspace["repo"], env=workspace["env"], capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    print(f"{block.id}: exit {run.returncode} in {seconds:.1f} s")
    assert run.returncode == 0, f"{block.id} exited {run.returncode}\n--- stdout\n{run.stdout[-3000:]}\n" \
                                f"--- stderr\n{run.stderr[-3000:]}"
