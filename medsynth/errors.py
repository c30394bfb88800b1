"""Errors that medsynth reports to people as one line, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A problem with a file or folder a person gave us.

    ``str(error)`` is ``"<path>: <problem>"``; command-line tools print it as ``error: <path>: <problem>``
    and exit with status 2.

    Args:
        path: the offending file, folder or option value.
        problem: what is wrong, in a few words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
