"""Pure-Python parts of the MedSynth Slicer module: usable and tested without the Slicer GUI.

- :mod:`MedSynthLib.geometry`: IJK-to-RAS <-> NIfTI affine, RAS <-> LPS, KJI <-> IJK.
- :mod:`MedSynthLib.process`: the ``medsynth convert`` command, its environment, and a cancellable runner.
- :mod:`MedSynthLib.worker`: a long-lived ``medsynth worker`` child that keeps torch and the model loaded.
- :mod:`MedSynthLib.logic`: node -> file -> medsynth -> file -> node (needs MRML: Slicer or ``slicer-core``).
- :mod:`MedSynthLib.dependencies`: which Python packages are missing from Slicer's Python.
"""

from __future__ import annotations

from MedSynthLib.geometry import (
    ijk_to_kji,
    ijk_to_ras_to_nifti_affine,
    kji_to_ijk,
    lps_to_ras,
    matrix_to_numpy,
    nifti_affine_to_ijk_to_ras,
    numpy_to_vtk_matrix,
    ras_to_lps,
)
from MedSynthLib.process import (
    DEVICE_CHOICES,
    ProcessRunner,
    build_command,
    child_environment,
    error_message,
    target_domain,
)

__all__ = [
    "DEVICE_CHOICES",
    "ProcessRunner",
    "build_command",
    "child_environment",
    "error_message",
    "ijk_to_kji",
    "ijk_to_ras_to_nifti_affine",
    "kji_to_ijk",
    "lps_to_ras",
    "matrix_to_numpy",
    "nifti_affine_to_ijk_to_ras",
    "numpy_to_vtk_matrix",
    "ras_to_lps",
    "target_domain",
]
