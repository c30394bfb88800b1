"""medsynth: unpaired image-to-image translation (CycleGAN) for medical images.

The public API is re-exported here and imported on first use, so that ``medsynth-* --help`` stays instant:

    >>> from medsynth import Translator, TrainConfig, train            # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from medsynth.errors import InputError

__version__ = "0.1.0"

_EXPORTS = {
    "Translator": "medsynth.inference",
    "train": "medsynth.training",
    "Trainer": "medsynth.training",
    "TrainConfig": "medsynth.config",
    "ModelConfig": "medsynth.config",
    "load_image": "medsynth.io",
    "save_like": "medsynth.io",
    "evaluate": "medsynth.evaluation",
    "masked_metrics": "medsynth.evaluation",
    "run_demo": "medsynth.demo",
}

__all__ = ["InputError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medsynth' has no attribute {name!r}")
