"""The command-line layer: one module per command, each a parser (``build_parser``) and a ``main(argv) -> int``.

Commands are thin wrappers over the Python API; nothing below this package imports it. Heavy modules (torch,
MONAI, FastAPI, matplotlib) are imported inside the commands, after parsing, so that ``--help`` is instant.

=================  ===========================  ========================================
console script     ``python -m medsynth ...``   module
=================  ===========================  ========================================
medsynth-train     train                        :mod:`medsynth.cli.train`
medsynth-convert   convert                      :mod:`medsynth.cli.convert`
medsynth-eval      eval                         :mod:`medsynth.cli.eval`
medsynth-enhance   enhance                      :mod:`medsynth.cli.enhance`
medsynth-serve     serve                        :mod:`medsynth.cli.serve`
medsynth-demo      demo                         :mod:`medsynth.cli.demo`
medsynth-calibrate calibrate                    :mod:`medsynth.cli.calibrate`
(none)             bundle                       :mod:`medsynth.cli.bundle` (a model as a MONAI bundle)
(none)             worker                       :mod:`medsynth.cli.worker` (jobs on stdin; the Slicer module)
=================  ===========================  ========================================

Shared helpers: :func:`exit_on_error` (from :mod:`medsynth.errors`) and :class:`Reporter` (progress bars or
``PROGRESS`` lines, :mod:`medsynth.cli.progress`).
"""

from __future__ import annotations

from medsynth.cli.bundle import main as bundle_main
from medsynth.cli.calibrate import main as calibrate_main
from medsynth.cli.convert import build_parser as convert_parser
from medsynth.cli.convert import main as convert_main
from medsynth.cli.demo import main as demo_main
from medsynth.cli.enhance import main as enhance_main
from medsynth.cli.eval import main as eval_main
from medsynth.cli.progress import Reporter
from medsynth.cli.serve import main as serve_main
from medsynth.cli.train import build_parser as train_parser
from medsynth.cli.train import main as train_main
from medsynth.cli.worker import main as worker_main
from medsynth.errors import InputError, exit_on_error

__all__ = [
    "COMMANDS",
    "InputError",
    "Reporter",
    "bundle_main",
    "calibrate_main",
    "convert_main",
    "convert_parser",
    "demo_main",
    "enhance_main",
    "eval_main",
    "exit_on_error",
    "serve_main",
    "train_main",
    "train_parser",
    "worker_main",
]

#: ``python -m medsynth <name>``: the command's main.
COMMANDS = {
    "train": train_main,
    "convert": convert_main,
    "eval": eval_main,
    "enhance": enhance_main,
    "serve": serve_main,
    "demo": demo_main,
    "worker": worker_main,
    "bundle": bundle_main,
    "calibrate": calibrate_main,
}
