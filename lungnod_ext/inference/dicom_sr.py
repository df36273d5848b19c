"""DICOM SR measurement report (TID 1500, Comprehensive 3D SR) of the nodules in a lungnod DICOM SEG.

:func:`write_measurement_report` writes what a PACS or OHIF lists as measurements next to the SEG's outlines:
one "Imaging Measurement Report" whose measurement groups (TID 1411, volumetric ROI) each reference one
segment of the SEG (:mod:`lungnod_ext.inference.dicom_seg`) and carry, in the units radiologists report:

- Long axis and Short axis (SNOMED CT 103339001 / 103340004, mm): the outline's axes on the axial slice where
  it is longest (:mod:`lungnod_ext.inference.measurements`; the long axis's end points, LPS mm, are in the
  nodules JSON: TID 1411 groups take no coordinates);
- Diameter (SNOMED CT 81827009, mm): the mean axial diameter, (long + short) / 2, as Lung-RADS sizes nodules;
- Volume (SNOMED CT 118565006, mm3) of the outline;
- the detector's nodule probability (0-1, code ``nodule-probability`` of the local scheme ``99LUNGNOD``: a
  score that the finding is a nodule, not a malignancy estimate), where the nodule has one;
- its attenuation measured from HU (:mod:`lungnod_ext.inference.attenuation`) as a qualitative evaluation
  (``attenuation`` = ``solid`` / ``part-solid`` / ``ground-glass``, all ``99LUNGNOD``: no standard code set
  names the three) and, where part of it is solid, the solid component's mean axial diameter (mm,
  ``solid-component-diameter``), what Lung-RADS sizes a part-solid nodule by.

Finding: SNOMED CT "Nodule" in "Lung"; tracking identifier "nodule <id>" as in the SEG; observer: the device
lungnod (algorithm "lungnod", its version). The report is marked complete, not final and not verified: an
algorithm's proposal for a person to read. Evidence: the SEG (which names the source CT images; same
study). Research software, not a medical device: no Lung-RADS category or recommendation is derived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

from data_prep.nifti_io import atomic_path

SR_SERIES_DESCRIPTION = "lungnod nodule measurements"
PROBABILITY_CODE = ("nodule-probability", "99LUNGNOD", "Nodule probability (lungnod detector score)")
SOLID_DIAMETER_CODE = ("solid-component-diameter", "99LUNGNOD", "Solid component mean axial diameter")
ATTENUATION_CODE = ("attenuation", "99LUNGNOD", "Nodule attenuation (lungnod, from HU)")
ATTENUATION_VALUES = {"solid": "Solid", "part-solid": "Part-solid", "ground-glass": "Ground-glass"}


def _measurements(nodule: Mapping) -> list:
    """The TID 300 measurements of one nodule dict (module doc); fields it lacks are left out."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mm, mm3 = hd.sr.CodedConcept("mm", "UCUM", "millimeter"), hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
    fields = (("long_axis_mm", codes.SCT.LongAxis, mm, 2), ("short_axis_mm", codes.SCT.ShortAxis, mm, 2),
              ("mean_axial_diameter_mm", codes.SCT.Diameter, mm, 2), ("volume_mm3", codes.SCT.Volume, mm3, 1),
              ("probability", hd.sr.CodedConcept(*PROBABILITY_CODE), hd.sr.CodedConcept("1", "UCUM", "no units"), 4),
              ("solid_mean_axial_diameter_mm", hd.sr.CodedConcept(*SOLID_DIAMETER_CODE), mm, 2))
    return [hd.sr.Measurement(name=name, value=round(float(nodule[key]), digits), unit=unit)
            for key, name, unit, digits in fields if nodule.get(key) is not None]


def _qualitative(nodule: Mapping) -> list | None:
    """The nodule's attenuation as a TID 1411 qualitative evaluation (module doc); None when not measured."""
    import highdicom as hd

    kind = nodule.get("attenuation")
    if kind not in ATTENUATION_VALUES:
        return None
    return [hd.sr.QualitativeEvaluation(name=hd.sr.CodedConcept(*ATTENUATION_CODE),
                                        value=hd.sr.CodedConcept(kind, "99LUNGNOD", ATTENUATION_VALUES[kind]))]


def write_measurement_report(seg_path, nodules: Sequence[Mapping], out_path, series_number: int = 902,
                             series_description: str = SR_SERIES_DESCRIPTION) -> Path:
    """Write the TID 1500 report of ``nodules`` (segment n of the SEG at ``seg_path`` = ``nodules[n - 1]``,
    as :func:`lungnod_ext.inference.dicom_seg.write_dicom_seg` numbers them) atomically; returns the path.

    Each group references its segment and the CT series the SEG names (ReferencedSeriesSequence); the SEG is
    the report's evidence. Raises ValueError when the SEG's segment count is not ``len(nodules)``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from lungnod_ext import __version__ as version

    seg = pydicom.dcmread(seg_path)
    n_segments = len(seg.SegmentSequence)
    if n_segments != len(nodules):
        raise ValueError(f"{seg_path}: {n_segments} segment(s), {len(nodules)} nodule(s) to report")
    # the CT series the SEG was made from (highdicom's ReferencedSegment.from_segmentation fails on a SEG
    # whose one segment is named in the shared functional groups, as highdicom writes it)
    source_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    algorithm = hd.sr.AlgorithmIdentification(name="lungnod", version=version)
    groups = []
    for n, nodule in enumerate(nodules, start=1):
        ident = seg.SegmentSequence[n - 1]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=ident.TrackingUID, identifier=ident.TrackingID),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=n,
                source_series=hd.sr.SourceSeriesForSegmentation(source_series)),
            finding_type=codes.SCT.Nodule, finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
            algorithm_id=algorithm, measurements=_measurements(nodule), qualitative_evaluations=_qualitative(nodule)))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="lungnod", manufacturer_name="lungnod", model_name=f"lungnod {version}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg], content=report[0], series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lungnod", is_complete=True,
        is_final=False, is_verified=False, series_description=series_description)
    with atomic_path(out_path) as tmp:
        sr.save_as(tmp)
    return Path(out_path)
