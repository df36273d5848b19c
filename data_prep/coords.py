"""Voxel <-> world coordinates, in one place.

Conventions used across lungnod:

* A voxel index is ``(i, j, k)`` = (column, row, slice), the ITK / NIfTI order. Arrays held in
  memory by data_prep are ``(k, j, i)`` = (z, y, x), the order SimpleITK's ``GetArrayFromImage``
  returns; the helpers here take and return ``(i, j, k)`` unless their name says ``zyx``.
* World coordinates are millimetres in DICOM / ITK **LPS** (x grows to the patient's Left, y to
  Posterior, z to Superior) unless a name says ``ras``. NIfTI affines as nibabel reads them are RAS:
  ``ras = diag(-1, -1, 1) @ lps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Grid of a 3D image: ``world_lps = origin + direction @ (spacing * ijk)``.

    origin: LPS mm of voxel (0, 0, 0); spacing: mm per (i, j, k); direction: 3x3, columns are the
    unit LPS directions of the i, j, k axes; shape: voxel counts (ni, nj, nk).
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    shape: tuple[int, int, int] = (0, 0, 0)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing, dtype=float)[None, :]
        a[:3, 3] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS mm: the NIfTI sform/qform of this grid."""
        a = self.affine_lps()
        a[:3, :] = LPS_TO_RAS @ a[:3, :]
        return a

    def voxel_to_world(self, ijk) -> np.ndarray:
        """(..., 3) voxel indices (i, j, k), fractional allowed -> (..., 3) LPS mm."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction_matrix * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def world_to_voxel(self, xyz_lps) -> np.ndarray:
        """(..., 3) LPS mm -> (..., 3) fractional voxel indices (i, j, k)."""
        m = self.direction_matrix * np.asarray(self.spacing)[None, :]
        return (np.asarray(xyz_lps, dtype=float) - np.asarray(self.origin)) @ np.linalg.inv(m).T

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @classmethod
    def from_affine_ras(cls, affine: np.ndarray, shape) -> "Geometry":
        """Inverse of :meth:`affine_ras` (e.g. for a NIfTI read with nibabel)."""
        lps = np.asarray(affine, dtype=float)[:3, :].copy()
        lps = LPS_TO_RAS @ lps
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / spacing[None, :]
        return cls(tuple(lps[:3, 3]), tuple(spacing), tuple(direction.ravel()), tuple(int(s) for s in shape[:3]))

    @classmethod
    def from_sitk(cls, image) -> "Geometry":
        """From a SimpleITK image (SimpleITK works in LPS)."""
        return cls(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetDirection()), tuple(image.GetSize()))


def bbox_lps(geometry: Geometry, bbox_ijk) -> list[float]:
    """Voxel box (i0, j0, k0, i1, j1, k1), end exclusive -> the axis-aligned LPS mm box (x0, y0, z0, x1, y1,
    z1) holding the voxels' full extent (voxel centres +- half a voxel), min corner first."""
    lo = np.asarray(bbox_ijk[:3], dtype=float) - 0.5
    hi = np.asarray(bbox_ijk[3:], dtype=float) - 0.5
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    world = geometry.voxel_to_world(corners)
    return [float(v) for v in world.min(axis=0)] + [float(v) for v in world.max(axis=0)]


def lps_to_ras(xyz) -> np.ndarray:
    """Flip the first two world axes (LPS <-> RAS); the map is its own inverse."""
    xyz = np.asarray(xyz, dtype=float)
    return xyz * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras
