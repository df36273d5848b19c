"""LIDC-IDRI XML reads -> reader marks (no pylidc).

One ``readingSession`` per radiologist. Each ``unblindedReadNodule`` is a mark: nodules >= 3 mm carry
``roi`` contours (``edgeMap`` pixel points, x = column, y = row, on the slice named by
``imageSOP_UID`` / ``imageZposition``; ``inclusion`` FALSE = a hole) and ``characteristics``; nodules
< 3 mm are a single point and no characteristics. ``nonNodule`` marks carry one ``locus`` point.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.errors import AnnotationError

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy")
KIND_NODULE, KIND_SMALL, KIND_NON_NODULE = "nodule", "small_nodule", "non_nodule"


@dataclass
class Roi:
    """One contour on one slice: ``points_xy`` (n, 2) int pixel (column, row); z is world z in mm."""

    z_mm: float | None
    sop_uid: str | None
    inclusion: bool
    points_xy: np.ndarray


@dataclass
class ReaderMark:
    """One reader's mark of one finding: a contoured nodule, a small (< 3 mm) nodule, or a non-nodule."""

    reader: str               # servicingRadiologistID, or "session<N>" when absent
    mark_id: str              # the reader's own noduleID / nonNoduleID
    kind: str                 # KIND_NODULE, KIND_SMALL or KIND_NON_NODULE
    rois: list[Roi]
    characteristics: dict[str, int] = field(default_factory=dict)


@dataclass
class LidcRead:
    path: Path
    series_uid: str
    study_uid: str
    readers: list[str]
    marks: list[ReaderMark]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el, name):
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _text(el, name, default=None):
    c = _child(el, name)
    return c.text.strip() if c is not None and c.text is not None and c.text.strip() else default


def _points(parent, point_tag: str, path: Path) -> np.ndarray:
    pts = []
    for p in _children(parent, point_tag):
        x, y = _text(p, "xCoord"), _text(p, "yCoord")
        if x is None or y is None:
            continue
        try:
            pts.append((int(round(float(x))), int(round(float(y)))))
        except ValueError:
            raise AnnotationError(path, f"non-numeric {point_tag} coordinate ({x!r}, {y!r})") from None
    return np.asarray(pts, dtype=np.int32).reshape(-1, 2)


def _float_or_none(s):
    try:
        return float(s) if s is not None else None
    except ValueError:
        return None


def read_series_uid(path) -> str | None:
    """Only the SeriesInstanceUid of an LIDC XML file (None if it has none / is not LIDC XML)."""
    try:
        for _, el in ET.iterparse(str(path), events=("end",)):
            name = _local(el.tag)
            if name in ("SeriesInstanceUid", "SeriesInstanceUID"):
                return (el.text or "").strip() or None
            if name == "readingSession":
                return None
    except ET.ParseError:
        return None
    return None


def parse_lidc_xml(path) -> LidcRead:
    """Parse one LIDC XML file. Raises AnnotationError (naming the file) if it is not well-formed LIDC XML."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(path, f"malformed XML ({exc})") from None
    except OSError as exc:
        raise AnnotationError(path, f"cannot read ({exc.strerror})") from None
    if _local(root.tag) != "LidcReadMessage":
        raise AnnotationError(path, f"not an LIDC CT read (root element <{_local(root.tag)}>)")
    header = _child(root, "ResponseHeader")
    series_uid = (_text(header, "SeriesInstanceUid") or _text(header, "SeriesInstanceUID") or "") if header is not None else ""
    study_uid = (_text(header, "StudyInstanceUID") or "") if header is not None else ""
    readers, marks = [], []
    for n, session in enumerate(_children(root, "readingSession")):
        reader = _text(session, "servicingRadiologistID") or f"session{n + 1}"
        if reader in readers:
            reader = f"{reader}#{n + 1}"
        readers.append(reader)
        for nod in _children(session, "unblindedReadNodule"):
            rois = []
            for roi in _children(nod, "roi"):
                inclusion = (_text(roi, "inclusion", "TRUE") or "TRUE").upper() != "FALSE"
                rois.append(Roi(_float_or_none(_text(roi, "imageZposition")), _text(roi, "imageSOP_UID"),
                                inclusion, _points(roi, "edgeMap", path)))
            chars = {}
            c_el = _child(nod, "characteristics")
            if c_el is not None:
                for name in CHARACTERISTICS:
                    v = _text(c_el, name)
                    if v is not None:
                        try:
                            chars[name] = int(float(v))
                        except ValueError:
                            raise AnnotationError(path, f"characteristic {name} is not a number ({v!r})") from None
            n_points = [len(r.points_xy) for r in rois if r.inclusion]
            kind = KIND_NODULE if any(k > 1 for k in n_points) else KIND_SMALL
            marks.append(ReaderMark(reader, _text(nod, "noduleID", "?"), kind, rois, chars))
        for non in _children(session, "nonNodule"):
            roi = Roi(_float_or_none(_text(non, "imageZposition")), _text(non, "imageSOP_UID"), True,
                      _points(non, "locus", path))
            marks.append(ReaderMark(reader, _text(non, "nonNoduleID", "?"), KIND_NON_NODULE, [roi]))
    return LidcRead(path, series_uid, study_uid, readers, marks)
