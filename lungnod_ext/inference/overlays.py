"""Pictures for a person to check: CT slices in a lung window with the nodule mask's contour, per-candidate
panels and a per-case montage, as PNG.

Display convention (radiological, as a reading workstation shows an axial slice): the patient's right on
the image's left, anterior at the top, so image columns run toward patient Left (+x LPS) and rows toward
Posterior (+y LPS). A (z, y, x) array on a standard LPS grid (i -> L, j -> P) is already in that order;
:class:`DisplayOrientation` transposes / flips any other axis-aligned grid (e.g. i -> R) into it.

Images are RGB uint8 ``(rows, cols, 3)``; HU slices are ``(y, x)``; colours are RGB tuples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_prep.coords import Geometry
from data_prep.images2d import LUNG_WINDOW_HU, window_to_uint8, write_image_png

CONTOUR_RGB = (0, 255, 0)
BOX_RGB = (255, 255, 0)
TEXT_RGB = (255, 255, 255)
SEPARATOR_RGB = (64, 64, 64)
AXIS_RGB = (0, 200, 255)              # the long-axis caliper line
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE_BAR_MM = (1, 2, 5, 10, 20, 50, 100, 200)


# ------------------------------------------------------------------------------------------------ orientation
@dataclass(frozen=True)
class DisplayOrientation:
    """How a (z, y, x) array maps to radiological display order (view axes: slice -> S, row -> P, col -> L).

    ``perm[v]``: the array axis shown along view axis v; ``flip[v]``: whether it is reversed;
    ``shape`` / ``spacing``: view shape and mm per view axis.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @classmethod
    def from_geometry(cls, geometry: Geometry) -> DisplayOrientation:
        """Raises ValueError for an oblique grid whose axes cannot be assigned to distinct LPS axes."""
        d = geometry.direction_matrix
        perm, flip = [-1, -1, -1], [False, False, False]
        for a in range(3):                      # array axis a (z, y, x) is voxel axis 2 - a (k, j, i)
            column = d[:, 2 - a]
            world = int(np.argmax(np.abs(column)))
            view = 2 - world                    # LPS x -> columns, y -> rows, z -> slices
            if perm[view] != -1:
                raise ValueError(f"grid direction {geometry.direction} is too oblique to display axially")
            perm[view], flip[view] = a, bool(column[world] < 0)
        shape_zyx, spacing_zyx = geometry.shape_zyx, tuple(float(s) for s in geometry.spacing[::-1])
        return cls(tuple(perm), tuple(flip), tuple(shape_zyx[a] for a in perm), tuple(spacing_zyx[a] for a in perm))

    def apply(self, array_zyx: np.ndarray) -> np.ndarray:
        """(z, y, x) array -> view (a numpy view, no copy)."""
        out = np.transpose(array_zyx, self.perm)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def voxel_to_view(self, ijk) -> np.ndarray:
        """(..., 3) voxel indices (i, j, k), fractional allowed -> (..., 3) view indices (slice, row, col)."""
        zyx = np.asarray(ijk, dtype=float)[..., ::-1]
        out = np.stack([zyx[..., a] for a in self.perm], axis=-1)
        n = np.asarray(self.shape, dtype=float)
        return np.where(np.asarray(self.flip), n - 1 - out, out)

    def view_to_voxel(self, view) -> np.ndarray:
        """Inverse of :meth:`voxel_to_view`."""
        v = np.asarray(view, dtype=float)
        v = np.where(np.asarray(self.flip), np.asarray(self.shape, dtype=float) - 1 - v, v)
        zyx = np.empty_like(v)
        for view_axis, a in enumerate(self.perm):
            zyx[..., a] = v[..., view_axis]
        return zyx[..., ::-1]


# ------------------------------------------------------------------------------------------------ drawing
def _font_scale(image: np.ndarray) -> float:
    return max(0.35, min(image.shape[:2]) / 720.0)


def _put_text(image: np.ndarray, text: str, org, scale: float, colour=TEXT_RGB) -> None:
    """Text with a black outline, readable on any grey (the outline is the same text shifted by 1 px: a thicker
    stroke would also widen OpenCV's glyph advance and misalign the two)."""
    x, y = int(org[0]), int(org[1])
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                cv2.putText(image, text, (x + dx, y + dy), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), _FONT, scale, colour, 1, cv2.LINE_AA)


def _draw_text_lines(image: np.ndarray, lines: Sequence[str]) -> None:
    scale = _font_scale(image)
    y = 4
    for line in lines:
        (_, h), base = cv2.getTextSize(line, _FONT, scale, 1)
        y += h + base
        _put_text(image, line, (5, y), scale)


def _draw_scale_bar(image: np.ndarray, mm_per_pixel: float) -> None:
    """A horizontal bar of a round length (about a fifth of the width) at the bottom right, labelled in mm."""
    h, w = image.shape[:2]
    width_mm = w * mm_per_pixel
    length_mm = max([v for v in _SCALE_BAR_MM if v <= 0.2 * width_mm] or [_SCALE_BAR_MM[0]])
    length_px = int(round(length_mm / mm_per_pixel))
    margin = max(6, w // 40)
    x1, y = w - margin, h - margin
    x0 = max(x1 - length_px, 0)
    tick = max(3, h // 100)
    for colour, t in (((0, 0, 0), 4), (TEXT_RGB, 2)):
        cv2.line(image, (x0, y), (x1, y), colour, t)
        cv2.line(image, (x0, y - tick), (x0, y + tick), colour, t)
        cv2.line(image, (x1, y - tick), (x1, y + tick), colour, t)
    label = f"{length_mm:g} mm"
    scale = _font_scale(image)
    (tw, _), base = cv2.getTextSize(label, _FONT, scale, 1)
    _put_text(image, label, (max(x1 - tw, 0), y - tick - base - 2), scale)


def _draw_orientation_letters(image: np.ndarray) -> None:
    """R (left edge), L (right edge), A (top), P (bottom): the radiological display convention."""
    h, w = image.shape[:2]
    scale = _font_scale(image)
    (tw, th), _ = cv2.getTextSize("R", _FONT, scale, 1)
    _put_text(image, "R", (4, h // 2 + th // 2), scale)
    _put_text(image, "L", (w - tw - 4, h // 2 + th // 2), scale)
    _put_text(image, "A", (w // 2 - tw // 2, th + 4), scale)
    _put_text(image, "P", (w // 2 - tw // 2, h - 6), scale)


def overlay_slice(hu_slice: np.ndarray, mask_slice: np.ndarray | None = None, window=LUNG_WINDOW_HU,
                  contour_rgb=CONTOUR_RGB, text_lines: Sequence[str] = (), spacing_mm=None, zoom: float = 1.0,
                  out_shape: tuple[int, int] | None = None, thickness: int = 1,
                  orientation_letters: bool = False) -> np.ndarray:
    """One slice as an RGB picture: HU in ``window`` (min, max), the mask's contour (outline, not filled).

    Args:
        hu_slice: (y, x) HU, shown as given (row 0 at the top; see the module doc for orientation).
        mask_slice: (y, x), non-zero = inside; None draws no contour.
        spacing_mm: (row, column) mm per pixel. Given, the picture gets square pixels and a scale bar.
        zoom: output pixels per input pixel (along the finer axis); ``out_shape`` (rows, cols) overrides it.
        text_lines: drawn top-left, white with a black outline.
        orientation_letters: draw R / L / A / P at the edges (only true for a radiologically oriented slice).
    Returns: (rows, cols, 3) uint8 RGB.
    """
    hu_slice = np.asarray(hu_slice)
    if hu_slice.ndim != 2:
        raise ValueError(f"hu_slice must be 2D (y, x), got shape {hu_slice.shape}")
    if mask_slice is not None and np.shape(mask_slice) != hu_slice.shape:
        raise ValueError(f"mask_slice shape {np.shape(mask_slice)} differs from hu_slice shape {hu_slice.shape}")
    ny, nx = hu_slice.shape
    sy, sx = (1.0, 1.0) if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
    if out_shape is None:
        finest = min(sy, sx)
        out_shape = (max(1, int(round(ny * zoom * sy / finest))), max(1, int(round(nx * zoom * sx / finest))))
    out_h, out_w = int(out_shape[0]), int(out_shape[1])
    grey = window_to_uint8(hu_slice, window)
    mask = None if mask_slice is None else (np.asarray(mask_slice) != 0).astype(np.uint8)
    if (out_h, out_w) != (ny, nx):
        grey = cv2.resize(grey, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if mask is not None:
            mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    image = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, tuple(int(c) for c in contour_rgb), thickness, cv2.LINE_8)
    if orientation_letters:
        _draw_orientation_letters(image)
    if text_lines:
        _draw_text_lines(image, list(text_lines))
    if spacing_mm is not None:
        _draw_scale_bar(image, sx * nx / out_w)
    return image


def write_png(path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    return write_image_png(path, rgb[:, :, ::-1])


# ------------------------------------------------------------------------------------------------ candidates
def _crop(slice_yx: np.ndarray, centre_rc, half_rc, fill, dtype=None) -> np.ndarray:
    """A (2 half_r + 1, 2 half_c + 1) window of a 2D array around (row, col), padded with ``fill``, as
    ``dtype`` (default: the array's)."""
    r, c = int(round(centre_rc[0])), int(round(centre_rc[1]))
    hr, hc = int(half_rc[0]), int(half_rc[1])
    out = np.full((2 * hr + 1, 2 * hc + 1), fill, dtype=slice_yx.dtype if dtype is None else dtype)
    r0, r1 = max(r - hr, 0), min(r + hr + 1, slice_yx.shape[0])
    c0, c1 = max(c - hc, 0), min(c + hc + 1, slice_yx.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - (r - hr):r1 - (r - hr), c0 - (c - hc):c1 - (c - hc)] = slice_yx[r0:r1, c0:c1]
    return out


def _candidate_lines(case_id: str, c: Mapping, short: bool = False) -> list[str]:
    score = f"p={c['max_prob']:.2f}" if "max_prob" in c else ""
    if "cls_prob" in c:
        score += f" cls={c['cls_prob']:.2f}"
    size = f"{c['diameter_mm']:.1f} mm" if "diameter_mm" in c else ""
    if short:
        return [f"cand {c['id']}  {score}", size]
    x, y, z = c["centre_lps"]
    lines = [f"{case_id}  cand {c['id']}", f"{score}  d={size}" + (f"  V={c['volume_mm3']:.0f} mm3"
                                                                  if "volume_mm3" in c else ""),
             f"LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"
             + (f", image {c['image_number']}" if c.get("image_number") is not None else "")]
    if c.get("long_axis_mm") is not None:
        lines.append(f"axes {c['long_axis_mm']:.1f} x {c['short_axis_mm']:.1f} mm (slice k={c['axes_slice_k']})")
    if c.get("mean_hu") is not None and math.isfinite(float(c["mean_hu"])):
        kind = f", {c['attenuation']}" if c.get("attenuation") else ""
        lines.append(f"mean {c['mean_hu']:.0f} HU{kind}")
    return lines


class _CaseViews:
    """The volume, mask and geometry in radiological display order, plus per-candidate pictures."""

    def __init__(self, hu_zyx, mask_zyx, geometry: Geometry, window):
        if tuple(np.shape(hu_zyx)) != geometry.shape_zyx:
            raise ValueError(f"hu_zyx shape {np.shape(hu_zyx)} does not match geometry {geometry.shape_zyx}")
        if mask_zyx is not None and np.shape(mask_zyx) != np.shape(hu_zyx):
            raise ValueError(f"mask_zyx shape {np.shape(mask_zyx)} differs from hu_zyx shape {np.shape(hu_zyx)}")
        self.orient = DisplayOrientation.from_geometry(geometry)
        self.hu = self.orient.apply(np.asarray(hu_zyx))
        self.mask = None if mask_zyx is None else self.orient.apply(np.asarray(mask_zyx))
        self.spacing_rc = self.orient.spacing[1:]
        self.window = window
        self.geometry = geometry

    def slice_index(self, candidate: Mapping) -> int:
        """The displayed slice: where the candidate's axes were measured (``axes_slice_k``), else its centre's."""
        ijk = list(candidate["centre_voxel"])
        if candidate.get("axes_slice_k") is not None:
            ijk[2] = float(candidate["axes_slice_k"])
        s = self.orient.voxel_to_view(ijk)[0]
        return int(np.clip(round(float(s)), 0, self.hu.shape[0] - 1))

    def mask_slice(self, s: int):
        return None if self.mask is None else self.mask[s]

    def full_panel(self, s: int, candidate: Mapping | None = None, out_shape=None, lines=()) -> np.ndarray:
        image = overlay_slice(self.hu[s], self.mask_slice(s), self.window, spacing_mm=self.spacing_rc,
                              out_shape=out_shape, orientation_letters=True, text_lines=lines)
        if candidate is not None and "bbox_voxel" in candidate:
            b = candidate["bbox_voxel"]
            corners = self.orient.voxel_to_view([b[:3], [b[3] - 1, b[4] - 1, b[5] - 1]])
            fy = image.shape[0] / self.hu.shape[1]
            fx = image.shape[1] / self.hu.shape[2]
            pad = 4
            r0, r1 = corners[:, 1].min() * fy - pad, (corners[:, 1].max() + 1) * fy + pad
            c0, c1 = corners[:, 2].min() * fx - pad, (corners[:, 2].max() + 1) * fx + pad
            cv2.rectangle(image, (int(c0), int(r0)), (int(c1), int(r1)), BOX_RGB, 1, cv2.LINE_8)
        return image

    def crop_panel(self, s: int, candidate: Mapping, crop_mm: float | None, out_shape, lines) -> np.ndarray:
        side_mm = crop_mm if crop_mm is not None else max(40.0, 3.0 * float(candidate.get("diameter_mm", 0.0)))
        centre = self.orient.voxel_to_view(candidate["centre_voxel"])
        half = [max(1, int(round(side_mm / 2.0 / sp))) for sp in self.spacing_rc]
        fill = min(float(self.window[0]), -1024.0)
        hu = _crop(self.hu[s], centre[1:], half, fill, np.float32)
        mask = None if self.mask is None else _crop(self.mask[s], centre[1:], half, 0)
        image = overlay_slice(hu, mask, self.window, spacing_mm=self.spacing_rc, out_shape=out_shape,
                              thickness=2, text_lines=lines)
        ends = candidate.get("long_axis_lps_mm")
        if ends is not None:                    # the long axis, where it was measured (this slice)
            view = self.orient.voxel_to_view(self.geometry.world_to_voxel(ends))
            if np.all(np.abs(view[:, 0] - s) < 0.5):
                top = np.array([round(float(centre[1])) - half[0], round(float(centre[2])) - half[1]], dtype=float)
                scale = np.array(image.shape[:2], dtype=float) / (2 * np.asarray(half) + 1)
                rc = (view[:, 1:] - top + 0.5) * scale          # pixel corners -> picture coordinates
                a, b = (tuple(int(round(v)) for v in p[::-1]) for p in rc)
                cv2.line(image, a, b, AXIS_RGB, 2, cv2.LINE_AA)
        return image


def _montage(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    th, tw = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    gap = 2
    out = np.zeros((rows * th + (rows - 1) * gap, columns * tw + (columns - 1) * gap, 3), dtype=np.uint8)
    out[:] = SEPARATOR_RGB
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        out[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = tile
    return out


def write_candidate_overlays(hu_zyx: np.ndarray, mask_zyx: np.ndarray | None, candidates: Sequence[Mapping],
                             geometry: Geometry, out_dir, case_id: str, crop_mm: float | None = None,
                             window=LUNG_WINDOW_HU, montage_tile: int = 256, montage_columns: int = 4,
                             montage_slices: int = 6) -> list[Path]:
    """PNG pictures of a case's candidates, radiologically oriented, written atomically into ``out_dir``.

    * ``<case_id>_cand<id:03d>.png`` per candidate: the axial slice through its centre (or, when it was
      measured, ``axes_slice_k``: the slice of its long axis), side by side as (left) the full slice with the
      mask contour, a yellow box around the candidate, R/L/A/P letters and a scale bar, and (right) a zoomed
      square crop of ``crop_mm`` (default max(40 mm, 3 x diameter)) around it with the contour, the long
      axis drawn as a caliper line (``long_axis_lps_mm``) and the candidate's numbers (id, probability,
      diameter, volume, axes, LPS centre).
      Size: H x (W + 4 + H) for an H x W slice with square pixels.
    * ``<case_id>_montage.png``: a grid (``montage_columns`` wide) of ``montage_tile`` px crops of every
      candidate; with no candidate, ``montage_slices`` evenly spaced full slices with the mask contour.

    hu_zyx: (z, y, x) HU; mask_zyx: (z, y, x) segmentation or label map (non-zero = nodule) or None;
    candidates: dicts as :mod:`lungnod_ext.inference.candidates` makes (``id``, ``centre_voxel``, ``centre_lps``,
    ``bbox_voxel``, ``max_prob``, ``diameter_mm``, ...). Returns the paths written, candidates first.
    """
    views = _CaseViews(hu_zyx, mask_zyx, geometry, window)
    out_dir = Path(out_dir)
    written = []
    tiles = []
    for c in candidates:
        s = views.slice_index(c)
        full = views.full_panel(s, c)
        h = full.shape[0]
        crop = views.crop_panel(s, c, crop_mm, (h, h), _candidate_lines(case_id, c))
        separator = np.empty((h, 4, 3), dtype=np.uint8)
        separator[:] = SEPARATOR_RGB
        written.append(write_png(out_dir / f"{case_id}_cand{int(c['id']):03d}.png",
                                 np.concatenate([full, separator, crop], axis=1)))
        tiles.append(views.crop_panel(s, c, crop_mm, (montage_tile, montage_tile),
                                      _candidate_lines(case_id, c, short=True)))
    if not tiles:
        n_slices = views.hu.shape[0]
        picks = np.unique(np.linspace(0, n_slices - 1, max(montage_slices, 1) + 2)[1:-1].round().astype(int))
        ny, nx = views.hu.shape[1:]
        aspect = (ny * views.spacing_rc[0]) / (nx * views.spacing_rc[1])
        tile_shape = (max(1, int(round(montage_tile * aspect))), montage_tile)
        for s in picks:
            z_mm = geometry.voxel_to_world(views.orient.view_to_voxel([s, 0, 0]))[2]
            tiles.append(views.full_panel(int(s), out_shape=tile_shape,
                                          lines=[f"{case_id}: no candidate", f"z={z_mm:.1f} mm"]))
    written.append(write_png(out_dir / f"{case_id}_montage.png", _montage(tiles, montage_columns)))
    return written
