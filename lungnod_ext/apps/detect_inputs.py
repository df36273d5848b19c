"""``lungnod detect``'s inputs, converted in a forked process while the CLI imports torch and MONAI.

Converting a DICOM folder (data_prep, every check, int16 HU NIfTI) needs neither torch nor MONAI and takes 2-5 s
on 2 CPU cores; importing torch and MONAI takes 5-7 s there. :class:`DetectInputs` checks the output folder
and, where it can, starts :func:`lungnod_ext.data.inputs.resolve_inputs` in a child process forked before torch
is imported, so the two overlap on the two cores; :meth:`DetectInputs.datalist` waits for the child's
datalist (or raises its error, e.g. the one-line ``DataPrepError`` of a bad series).

The child is only forked on Linux and in a process that has not imported torch (forking after torch has
started its thread pools is unsafe): the CLI's process before MONAI's import. Elsewhere (macOS, Windows, tests,
notebooks, ``detect()`` called from Python) the conversion runs in this process when the datalist is asked
for. Both ways write the same files into ``<out>/converted`` and return the same datalist.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sys
import time
import traceback
from pathlib import Path

from data_prep.convert import check_output_dir
from lungnod_ext.apps.process_memory import peak_rss_mb


def can_fork_conversion() -> bool:
    """Whether a conversion child may be forked now: on Linux (macOS has ``fork`` but its system libraries are
    not safe in a forked child) and before torch is imported."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and "torch" not in sys.modules


def _timed_conversion(input_path, converted: Path, assume_hu: bool) -> tuple[list[dict], float]:
    """:func:`~lungnod_ext.data.inputs.resolve_inputs` into ``converted`` -> (the datalist, the seconds it took)."""
    from lungnod_ext.data.inputs import resolve_inputs

    t0 = time.perf_counter()
    datalist = resolve_inputs(input_path, converted, assume_hu=assume_hu)
    return datalist, time.perf_counter() - t0


def _convert_in_child(conn, input_path, converted: Path, assume_hu: bool) -> None:
    """The child: the datalist, the seconds it took and its peak memory (MB), or the exception (pickled), sent
    through ``conn``."""
    try:
        message = ("ok", *_timed_conversion(input_path, converted, assume_hu), peak_rss_mb())
    except BaseException as exc:  # noqa: BLE001 (handed to the parent, which raises it)
        message = ("error", exc, traceback.format_exc())
    try:
        conn.send(message)
    except Exception:  # an exception that cannot be pickled: its type and text
        conn.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}"), message[2]))
    finally:
        conn.close()


class DetectInputs:
    """The inputs of one detect run: ``out`` (checked, created if missing; ``created`` says whether this run
    made it) and the datalist ``[{"image": <NIfTI path>}]`` of ``input_path``, converted into ``out/converted``
    by a forked child when ``background`` (and :func:`can_fork_conversion`), else by this process when
    :meth:`datalist` is called. ``seconds``: how long the conversion itself took, once known;
    ``child_peak_rss_mb``: the conversion child's peak resident memory (None without a child)."""

    def __init__(self, input_path, out_dir, assume_hu: bool = False, background: bool = False) -> None:
        self.input_path = input_path
        self.assume_hu = assume_hu
        self.created = not Path(out_dir).exists()
        self.out = check_output_dir(out_dir)
        self.converted = self.out / "converted"
        self._converted_created = not self.converted.exists()
        self.seconds: float | None = None
        self.child_peak_rss_mb: float | None = None
        self._result: list[dict] | None = None
        self._process = self._conn = None
        if background and can_fork_conversion():
            sys.stdout.flush()  # the child must not write what this process has buffered a second time
            sys.stderr.flush()
            ctx = mp.get_context("fork")
            self._conn, child_conn = ctx.Pipe(duplex=False)
            self._process = ctx.Process(target=_convert_in_child, name="lungnod-convert",
                                        args=(child_conn, input_path, self.converted, assume_hu))
            self._process.start()
            child_conn.close()

    @property
    def in_background(self) -> bool:
        """Whether a child process converts (or converted) the inputs."""
        return self._process is not None

    def datalist(self) -> list[dict]:
        """The datalist (waits for the child); raises the conversion's error as this process would have."""
        if self._result is not None:
            return self._result
        if self._process is None:
            self._result, self.seconds = _timed_conversion(self.input_path, self.converted, self.assume_hu)
            return self._result
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the input conversion process ended without a result (exit code "
                               f"{self._process.exitcode})") from None
        finally:
            self._conn.close()
        self._process.join()
        if message[0] == "error":
            exc, child_traceback = message[1], message[2]
            if hasattr(exc, "add_note"):  # Python >= 3.11: --debug shows where the child failed
                exc.add_note("in the input conversion process:\n" + child_traceback)
            raise exc
        self._result, self.seconds, self.child_peak_rss_mb = message[1], message[2], message[3]
        return self._result

    def cancel(self) -> None:
        """Stop a child that is still converting and wait for it (nothing is removed: :meth:`abandon`)."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join()
        if self._conn is not None:
            self._conn.close()

    def abandon(self) -> None:
        """A run that failed or was interrupted: :meth:`cancel`, then remove what this run wrote: the output folder
        if it made it, else the ``converted`` folder if it made that (a user's existing folder and an earlier run's
        conversion in it are kept)."""
        self.cancel()
        if self.created:
            shutil.rmtree(self.out, ignore_errors=True)
        elif self._converted_created:
            shutil.rmtree(self.converted, ignore_errors=True)
