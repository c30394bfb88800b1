"""Geometry helpers between Slicer's MRML conventions and NIfTI/ITK files.

Slicer volume nodes describe voxel geometry with an IJK-to-RAS matrix; NIfTI affines map the same voxel
indices (i, j, k) to the same RAS millimetres, so the two are the same 4x4 matrix. ITK and NRRD headers
written by Slicer use LPS, which negates the first two world axes. ``slicer.util.arrayFromVolume`` returns
voxels in KJI order (the transpose of nibabel's IJK order).

None of this needs Slicer: matrices may be ``vtkMatrix4x4`` objects or numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Multiplying a world matrix on the left by this flips RAS <-> LPS (it is its own inverse).
RAS_LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_to_numpy(matrix: Any) -> np.ndarray:
    """Return a 4x4 float64 array from a ``vtkMatrix4x4`` or anything numpy can read as 4x4.

    Example:
        >>> matrix_to_numpy(np.eye(4)).shape
        (4, 4)
    """
    if hasattr(matrix, "GetElement"):
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {array.shape}")
    return array.copy()


def numpy_to_vtk_matrix(array: np.ndarray, out: Any = None) -> Any:
    """Copy a 4x4 array into ``out`` (a ``vtkMatrix4x4``), or into a new one if ``out`` is None."""
    array = matrix_to_numpy(array)
    if out is None:
        import vtk  # only here: the rest of this module works without VTK

        out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(array[r, c]))
    return out


def ijk_to_ras_to_nifti_affine(ijk_to_ras: Any) -> np.ndarray:
    """NIfTI affine (voxel -> RAS mm) of a volume whose MRML IJK-to-RAS matrix is ``ijk_to_ras``.

    Both map voxel indices in file order to RAS, so this is a checked copy; it exists so that callers
    say which convention they mean.
    """
    affine = matrix_to_numpy(ijk_to_ras)
    _check_affine(affine)
    return affine


def nifti_affine_to_ijk_to_ras(affine: Any) -> np.ndarray:
    """MRML IJK-to-RAS matrix of a NIfTI file whose affine is ``affine`` (the inverse of the above)."""
    matrix = matrix_to_numpy(affine)
    _check_affine(matrix)
    return matrix


def ras_to_lps(matrix: Any) -> np.ndarray:
    """Express a voxel -> RAS matrix as voxel -> LPS (ITK, DICOM, Slicer's NRRD headers)."""
    return RAS_LPS_FLIP @ matrix_to_numpy(matrix)


def lps_to_ras(matrix: Any) -> np.ndarray:
    """Express a voxel -> LPS matrix as voxel -> RAS (the inverse of :func:`ras_to_lps`)."""
    return RAS_LPS_FLIP @ matrix_to_numpy(matrix)


def kji_to_ijk(array: np.ndarray) -> np.ndarray:
    """Reorder a volume from Slicer's KJI array order to nibabel's IJK order (a view, no copy).

    Extra trailing axes (vector components) stay in place.
    """
    if array.ndim < 3:
        raise ValueError(f"expected a 3D volume, got {array.ndim} dimensions")
    return np.swapaxes(array, 0, 2)


def ijk_to_kji(array: np.ndarray) -> np.ndarray:
    """Reorder a volume from nibabel's IJK order to Slicer's KJI order (a view, no copy)."""
    return kji_to_ijk(array)


def spacing_origin_directions(matrix: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a voxel -> world matrix into spacing (3,), origin (3,) and unit direction columns (3, 3)."""
    m = matrix_to_numpy(matrix)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError("matrix has a zero-length voxel axis")
    return spacing, m[:3, 3].copy(), m[:3, :3] / spacing


def _check_affine(matrix: np.ndarray) -> None:
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"last row of a voxel -> world matrix must be 0 0 0 1, got {matrix[3]}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("voxel -> world matrix is singular")
