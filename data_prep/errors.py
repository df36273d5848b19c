"""Typed errors for user data. The CLI turns each into one line: ``error: <path>: <problem>``."""

from __future__ import annotations


class DataPrepError(Exception):
    """Base class: something is wrong with an input a user gave us (never a bug of ours)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        """Pickled as (path, problem), so the error crosses a process boundary (a forked conversion) intact."""
        return type(self), (self.path, self.problem), self.__dict__


class InputNotFoundError(DataPrepError):
    """The path does not exist, or holds nothing we can use."""


class DicomReadError(DataPrepError):
    """A DICOM file cannot be read (truncated, not DICOM, undecodable pixel data)."""


class SeriesError(DataPrepError):
    """A series is unusable as a CT volume (gap, duplicate, tilt, mixed geometry, ...)."""


class AnnotationError(DataPrepError):
    """An annotation file (LIDC XML, LUNA16 csv) is malformed or does not match its series."""


class OutputError(DataPrepError):
    """An output folder cannot be written."""
