"""data_prep: DICOM / LIDC XML / LUNA16 -> NIfTI volumes, consensus masks, nodule tables, datalists,
and the synthetic CT cohort used by lungnod's tests and demo.

Stages, one module each: :mod:`dicom_series` (discovery and reading), :mod:`lidc_xml` (reader marks),
:mod:`masks` (contours -> consensus masks, nodule table rows), :mod:`luna16`, :mod:`convert`
(orchestration, resumable), :mod:`datalist`, :mod:`synth` (synthetic cohort), :mod:`insert`
(simulated nodules in a real CT), :mod:`cli`.
"""

__version__ = "0.1.0"
