"""Which Python packages the MedSynth module still needs in Slicer's Python, found without importing them.

Importing torch costs seconds and locks its files (which would block a re-install on Windows), so the
check only looks for the packages' metadata and module specs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

#: pip requirement for medsynth itself; a Slicer setting (``MedSynth/PipRequirement``) may replace it with a
#: local folder, a wheel or a git URL.
MEDSYNTH_REQUIREMENT = "medsynth"
#: Lowest torch that medsynth supports; passed to the PyTorch extension's installer.
TORCH_REQUIREMENT = ">=2.1"


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution, or None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages() -> list[str]:
    """The packages to install before medsynth can run, in install order (``torch`` before ``medsynth``)."""
    missing = []
    if importlib.util.find_spec("torch") is None:
        missing.append("torch")
    if importlib.util.find_spec("medsynth") is None:
        missing.append("medsynth")
    return missing
