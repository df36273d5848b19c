"""Synthetic chest CT cohort: procedural anatomy and nodules (HU, LPS mm), DICOM series, LIDC XML reads.
Import order: nodules (shared with data_prep.insert) <- anatomy, readers <- cohort (a case in memory) <- writing."""

from data_prep.synth.cohort import CohortConfig, SyntheticCase, case_rng, generate_case
from data_prep.synth.writing import write_case, write_cohort

__all__ = ["CohortConfig", "SyntheticCase", "case_rng", "generate_case", "write_case", "write_cohort"]
