"""LIDC XML parser: the real 069.xml and hand-written edge cases."""

from __future__ import annotations

import pytest

from data_prep.errors import AnnotationError
from data_prep.lidc_xml import KIND_NODULE, KIND_NON_NODULE, KIND_SMALL, parse_lidc_xml, read_series_uid

MINI = """<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage xmlns="http://www.nih.gov">
<ResponseHeader><SeriesInstanceUid>1.2.3</SeriesInstanceUid><StudyInstanceUID>1.2</StudyInstanceUID></ResponseHeader>
<readingSession><servicingRadiologistID>A</servicingRadiologistID>
 <unblindedReadNodule><noduleID>n1</noduleID>
  <characteristics><malignancy>{mal}</malignancy><texture>5</texture></characteristics>
  <roi><imageZposition>-10.0 </imageZposition><imageSOP_UID>9.1</imageSOP_UID><inclusion>TRUE</inclusion>
   <edgeMap><xCoord>10</xCoord><yCoord>10</yCoord></edgeMap><edgeMap><xCoord>20</xCoord><yCoord>10</yCoord></edgeMap>
   <edgeMap><xCoord>20</xCoord><yCoord>20</yCoord></edgeMap></roi>
  <roi><imageZposition>-10.0</imageZposition><imageSOP_UID>9.1</imageSOP_UID><inclusion>FALSE</inclusion>
   <edgeMap><xCoord>14</xCoord><yCoord>12</yCoord></edgeMap><edgeMap><xCoord>16</xCoord><yCoord>12</yCoord></edgeMap></roi>
 </unblindedReadNodule>
 <unblindedReadNodule><noduleID>n2</noduleID>
  <roi><imageZposition>-12.5</imageZposition><imageSOP_UID>9.2</imageSOP_UID><inclusion>TRUE</inclusion>
   <edgeMap><xCoord>50</xCoord><yCoord>60</yCoord></edgeMap></roi></unblindedReadNodule>
 <nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>-15</imageZposition><imageSOP_UID>9.3</imageSOP_UID>
  <locus><xCoord>5</xCoord><yCoord>6</yCoord></locus></nonNodule>
</readingSession>
<readingSession><unblindedReadNodule><noduleID>m1</noduleID></unblindedReadNodule></readingSession>
</LidcReadMessage>
"""


def test_real_xml(lidc_series_dir):
    path = next(lidc_series_dir.glob("*.xml"))
    read = parse_lidc_xml(path)
    assert read.series_uid == lidc_series_dir.name
    assert read_series_uid(path) == read.series_uid
    assert read.readers == ["540461523", "1428348137", "-750896469", "2103845659"]
    kinds = [m.kind for m in read.marks]
    assert kinds.count(KIND_NODULE) == 4 and kinds.count(KIND_SMALL) == 9 and kinds.count(KIND_NON_NODULE) == 13
    first = read.marks[0]
    assert first.mark_id == "Nodule 001" and first.characteristics["malignancy"] == 5
    assert len(first.rois) == 8 and first.rois[0].z_mm == -125.0 and first.rois[0].inclusion
    assert first.rois[0].points_xy[0].tolist() == [312, 355]  # x = column, y = row


def test_mini_xml(tmp_path):
    p = tmp_path / "r.xml"
    p.write_text(MINI.format(mal=3))
    read = parse_lidc_xml(p)
    assert read.series_uid == "1.2.3" and read.readers == ["A", "session2"]
    nod, small, non, empty = read.marks
    assert nod.kind == KIND_NODULE and nod.characteristics == {"malignancy": 3, "texture": 5}
    assert [r.inclusion for r in nod.rois] == [True, False]
    assert small.kind == KIND_SMALL and small.rois[0].points_xy.tolist() == [[50, 60]]
    assert non.kind == KIND_NON_NODULE and non.rois[0].points_xy.tolist() == [[5, 6]] and non.rois[0].z_mm == -15
    assert empty.kind == KIND_SMALL and empty.rois == []   # a mark with no roi at all


@pytest.mark.parametrize("text, message", [
    (MINI.format(mal="high"), "characteristic malignancy is not a number"),
    (MINI.format(mal=3)[:300], "malformed XML"),
    ("<IdriReadMessage></IdriReadMessage>", "not an LIDC CT read"),
    (MINI.format(mal=3).replace("<xCoord>50</xCoord>", "<xCoord>a</xCoord>"), "non-numeric edgeMap"),
])
def test_bad_xml(tmp_path, text, message):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=message) as e:
        parse_lidc_xml(p)
    assert str(p) in str(e.value)
