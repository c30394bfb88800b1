"""``python -m medsynth <command> ...``: the console scripts without needing them on PATH (Slicer's Python)."""

from __future__ import annotations

import sys

from medsynth.cli import COMMANDS


def main() -> int:
    """Dispatch ``train``, ``convert``, ``eval``, ``enhance``, ``serve``, ``demo``, ``worker``, ``bundle``."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: python -m medsynth {{{','.join(COMMANDS)}}} ...")
        return 0 if len(sys.argv) >= 2 else 2
    name, argv = sys.argv[1], sys.argv[2:]
    if name in COMMANDS:
        return COMMANDS[name](argv)
    print(f"error: {name}: unknown command", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
