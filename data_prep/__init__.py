"""data_prep: DICOM / LIDC XML / LUNA16 -> NIfTI volumes, consensus masks, nodule tables, datalists,
and the synthetic CT cohort used by lungnod's tests and demo.

Stages, one module each: :mod:`dicom_series` (discovery and reading), :mod:`lidc_xml` (reader marks),
:mod:`masks` (contours -> consensus masks, nodule table rows), :mod:`luna16`, :mod:`convert`
(orchestration, resumable), :mod:`datalist`, :mod:`insert` (simulated nodules in a real CT), :mod:`cli`.
The synthetic cohort is the package :mod:`synth`, one module per concern: :mod:`synth.nodules` (the nodule
model, also used by :mod:`insert`), :mod:`synth.anatomy`, :mod:`synth.readers` (simulated LIDC readers),
:mod:`synth.cohort` (config, a case in memory), :mod:`synth.writing` (DICOM, LIDC XML, ground truth).
"""

__version__ = "0.3.0"   # in each conversion's signature: a new version converts again (0.2.0: provenance slice_instance_numbers, reconstruction; 0.3.0: reconstruction slice_thickness_mm)
