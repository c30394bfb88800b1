"""medsynth: unpaired image-to-image translation (CycleGAN) for medical images."""

from __future__ import annotations

from medsynth.errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "__version__"]
