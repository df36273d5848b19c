"""`lungnod detect`'s input conversion in a forked process beside MONAI's import (lungnod_ext.apps.detect_inputs).

The fork only happens in a process that has not imported torch, so the background cases run in a fresh Python
(this test session has torch loaded); they convert 20 slices of the real LIDC-IDRI-0001 series.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom

from lungnod_ext.apps.detect_inputs import DetectInputs, can_fork_conversion
from lungnod_ext.data.bundle_paths import REPO_ROOT


def _series(lidc_series_dir: Path, dest: Path, first: int = 60, n: int = 20) -> Path:
    files = sorted(lidc_series_dir.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    dest.mkdir(parents=True)
    for k, i in enumerate(np.argsort(z)[first:first + n]):
        shutil.copy(files[i], dest / f"s{k:03d}.dcm")
    return dest


def _fresh_python(script: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_the_forked_conversion_gives_the_in_process_datalist_and_files(lidc_series_dir, tmp_path):
    src = _series(lidc_series_dir, tmp_path / "dicom")
    lines = _fresh_python(f"""
        import sys
        from pathlib import Path
        from lungnod_ext.apps.detect_inputs import DetectInputs, can_fork_conversion
        print("can fork", can_fork_conversion())
        forked = DetectInputs({str(src)!r}, {str(tmp_path / "a")!r}, background=True)
        here = DetectInputs({str(src)!r}, {str(tmp_path / "b")!r}, background=False)
        print("background", forked.in_background, here.in_background, forked.created)
        a, b = forked.datalist(), here.datalist()
        print("names", [Path(x["image"]).name for x in a] == [Path(x["image"]).name for x in b], len(a))
        print("bytes", all(Path(x["image"]).read_bytes() == Path(y["image"]).read_bytes() for x, y in zip(a, b)))
        print("in out", all(Path(x["image"]).is_relative_to({str(tmp_path / "a" / "converted")!r}) for x in a))
        print("seconds", forked.seconds > 0, here.seconds > 0)
        print("child peak MB", 20 < forked.child_peak_rss_mb < 3000, here.child_peak_rss_mb is None)
        print("again", forked.datalist() is a)
        print("torch", "torch" in sys.modules)
    """)
    assert lines == ["can fork True", "background True False True", "names True 1", "bytes True", "in out True",
                     "seconds True True", "child peak MB True True", "again True", "torch False"]


def test_the_childs_bad_input_error_reaches_the_parent_as_itself(tmp_path):
    bad = tmp_path / "not_dicom"
    bad.mkdir()
    (bad / "notes.txt").write_text("no images here\n")
    lines = _fresh_python(f"""
        from lungnod_ext.apps.detect_inputs import DetectInputs
        for background in (True, False):
            inputs = DetectInputs({str(bad)!r}, {str(tmp_path / "out")!r} + str(background), background=background)
            try:
                inputs.datalist()
            except Exception as exc:
                print(inputs.in_background, type(exc).__name__, exc.path == {str(bad)!r}, str(exc))
    """)
    assert len(lines) == 2
    forked, here = (line.split(" ", 3) for line in lines)
    assert forked[0] == "True" and here[0] == "False"
    assert forked[1:] == here[1:]                      # same class, same path, same one-line message
    assert forked[1] == "InputNotFoundError" and forked[2] == "True"
    assert forked[3].startswith(f"{bad}: ")


def test_abandon_stops_the_child_and_removes_only_what_the_run_made(tmp_path):
    kept = tmp_path / "users_folder"
    kept.mkdir()
    (kept / "theirs.txt").write_text("keep me\n")
    lines = _fresh_python(f"""
        import time
        from pathlib import Path
        import lungnod_ext.data.inputs as inputs_module
        from lungnod_ext.apps.detect_inputs import DetectInputs

        def slow_conversion(path, work_dir, assume_hu=False):   # begins writing, then takes a minute
            Path(work_dir).mkdir(parents=True)
            (Path(work_dir) / "partial.tmp").write_bytes(b"x")
            time.sleep(60)

        inputs_module.resolve_inputs = slow_conversion   # the forked child inherits it
        for out in ({str(tmp_path / "new_out")!r}, {str(kept)!r}):
            inputs = DetectInputs("unused", out, background=True)
            t0 = time.perf_counter()
            while not (Path(out) / "converted" / "partial.tmp").exists() and time.perf_counter() - t0 < 60:
                time.sleep(0.05)
            inputs.abandon()
            print(Path(out).name, inputs.in_background, time.perf_counter() - t0 < 30,
                  Path(out).exists(), (Path(out) / "converted").exists())
    """)
    assert lines == ["new_out True True False False", "users_folder True True True False"]
    assert (kept / "theirs.txt").read_text() == "keep me\n"


def test_a_run_that_fails_after_its_conversion_removes_that_conversion_from_the_users_folder(lidc_series_dir,
                                                                                              tmp_path):
    src = _series(lidc_series_dir, tmp_path / "dicom", n=12)
    kept = tmp_path / "users_folder"
    kept.mkdir()
    (kept / "theirs.txt").write_text("keep me\n")
    lines = _fresh_python(f"""
        from pathlib import Path
        from lungnod_ext.apps.detect_inputs import DetectInputs
        inputs = DetectInputs({str(src)!r}, {str(kept)!r}, background=True)
        [item] = inputs.datalist()                 # converted; then the run fails (e.g. in the segmentation)
        print(inputs.in_background, Path(item["image"]).is_file())
        inputs.abandon()
        print(sorted(p.name for p in Path({str(kept)!r}).iterdir()))
        again = DetectInputs({str(src)!r}, {str(kept)!r}, background=True)
        again.datalist()                           # a run that succeeds keeps its conversion ...
        failed = DetectInputs({str(src)!r}, {str(kept)!r}, background=True)
        failed.datalist()
        failed.abandon()                           # ... and a later failed run into it does not remove it
        print(sorted(p.name for p in Path({str(kept)!r}).iterdir()))
    """)
    assert lines == ["True True", "['theirs.txt']", "['converted', 'theirs.txt']"]


def test_no_fork_once_torch_is_imported(lidc_series_dir, tmp_path):
    import torch  # noqa: F401  (as in this test session, a notebook, or detect() called from Python)

    assert not can_fork_conversion()
    inputs = DetectInputs(_series(lidc_series_dir, tmp_path / "dicom", n=12), tmp_path / "out", background=True)
    assert not inputs.in_background
    [item] = inputs.datalist()
    assert Path(item["image"]).parent == tmp_path / "out" / "converted" / "images"
    assert inputs.seconds > 0
