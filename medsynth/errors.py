"""Errors that medsynth reports to people as one line, never as a traceback."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["InputError", "Main", "exit_on_error"]

Main = Callable[[Sequence[str] | None], int]


class InputError(ValueError):
    """A problem with a file or folder a person gave us.

    ``str(error)`` is ``"<path>: <problem>"``; command-line tools print it as ``error: <path>: <problem>``
    and exit with status 2 (see :func:`exit_on_error`).

    Args:
        path: the offending file, folder or option value.
        problem: what is wrong, in a few words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def exit_on_error(main: Main) -> Main:
    """Turn :class:`InputError` into ``error: <path>: <problem>`` on stderr and exit status 2.

    Ctrl-C becomes ``error: interrupted`` and status 130. Decorates a command's ``main(argv) -> int``.
    """

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return wrapper
