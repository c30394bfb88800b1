"""``python -m medsynth <command> ...``: the console scripts without needing them on PATH (Slicer's Python)."""

from __future__ import annotations

import sys


def main() -> int:
    """Dispatch ``train``, ``convert``, ``eval``, ``enhance``, ``serve``, ``demo``."""
    from medsynth import cli

    commands = {"train": cli.train_main, "convert": cli.convert_main}
    optional = {"eval": ("medsynth.evaluation", "main"), "enhance": ("medsynth.enhance", "main"),
                "serve": ("medsynth.server", "main"), "demo": ("medsynth.cli", "demo_main")}
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: python -m medsynth {{{','.join(list(commands) + list(optional))}}} ...")
        return 0 if len(sys.argv) >= 2 else 2
    name, argv = sys.argv[1], sys.argv[2:]
    if name in commands:
        return commands[name](argv)
    if name in optional:
        import importlib

        module, attr = optional[name]
        return getattr(importlib.import_module(module), attr)(argv)
    print(f"error: {name}: unknown command", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
