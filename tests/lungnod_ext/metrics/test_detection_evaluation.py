"""lungnod evaluate on hand-made cases with known answers (stage 1 vs stage 1+2)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from data_prep.nifti_io import write_nifti
from data_prep.coords import Geometry, bbox_lps
from lungnod_ext.metrics.detection_evaluation import evaluate_pipeline, format_table
from lungnod_ext.apps.cli import main

GEOM = Geometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(64, 64, 32))
NODULES = {"A": [((20, 20, 10), 8.0), ((40, 40, 20), 6.0)], "B": [((30, 30, 15), 10.0)], "C": []}


def _reference(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for case, nods in NODULES.items():
        write_nifti(root / "images" / f"{case}.nii.gz", np.zeros(GEOM.shape_zyx, np.int16), GEOM)
        for n, ((i, j, k), d) in enumerate(nods, 1):
            r = int(d // 2)
            rows.append({"case_id": case, "nodule_id": n, "centre_x_lps_mm": i, "centre_y_lps_mm": j,
                         "centre_z_lps_mm": k, "diameter_mm": d, "bbox_i0": i - r, "bbox_j0": j - r, "bbox_k0": k - r,
                         "bbox_i1": i + r + 1, "bbox_j1": j + r + 1, "bbox_k1": k + r + 1})
    with open(root / "nodules.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _candidate(centre, d, max_prob, cls_prob=None):
    i, j, k = centre
    r = int(d // 2)
    c = {"id": 0, "centre_lps": [float(i), float(j), float(k)], "diameter_mm": d, "max_prob": max_prob,
         "bbox_lps_mm": bbox_lps(GEOM, [i - r, j - r, k - r, i + r + 1, j + r + 1, k + r + 1])}
    if cls_prob is not None:
        c["cls_prob"] = c["probability"] = cls_prob
    return c


def _predictions(root: Path, per_case: dict) -> Path:
    for case, cands in per_case.items():
        for n, c in enumerate(cands, 1):
            c["id"] = n
        (root / case).mkdir(parents=True)
        (root / case / f"{case}_candidates.json").write_text(json.dumps({"case": case, "candidates": cands}))
    return root


def test_perfect_detector_scores_one_and_classifier_removes_false_positives(tmp_path):
    ref = _reference(tmp_path / "ref")
    fp = (55.0, 10.0, 5.0)
    preds = {case: [_candidate(c, d, 0.9, 0.95) for c, d in nods] for case, nods in NODULES.items()}
    for case in preds:  # one confident stage-1 false positive per scan, rejected by the classifier
        preds[case].append(_candidate(fp, 6.0, 0.99, 0.05))
    result = evaluate_pipeline(_predictions(tmp_path / "pred", preds), ref)
    s1, s12 = result["stage1"], result["stage1+2"]
    assert s1["n_scans"] == 3 and s1["n_reference_nodules"] == 3
    assert s1["sensitivity"] == 1.0 and s1["fp"] == 3 and s1["fp_per_scan"] == 1.0
    # stage 1 ranks the FPs (0.99) above every TP (0.9): below 1 FP/scan nothing is found
    assert s1["froc"]["0.5"] == 0.0 and s1["froc"]["1.0"] == 1.0
    assert s12["fp"] == 0 and s12["sensitivity"] == 1.0 and s12["cpm"] == 1.0
    assert s12["map_50"] == pytest.approx(1.0) and s12["map_50_95"] == pytest.approx(1.0)
    assert s12["candidate_specificity"] == 1.0 and s12["candidate_auc"] == 1.0
    assert s1["candidate_auc"] == 0.0
    table = format_table(result)
    assert "stage1+2" in table.splitlines()[0] and "cpm" in table


def test_detector_that_misses_everything_scores_zero(tmp_path):
    ref = _reference(tmp_path / "ref")
    preds = {"A": [_candidate((5, 5, 5), 4.0, 0.8)], "B": [], "C": []}
    result = evaluate_pipeline(_predictions(tmp_path / "pred", preds), ref)
    assert "stage1+2" not in result
    s1 = result["stage1"]
    assert s1["sensitivity"] == 0.0 and s1["cpm"] == 0.0 and s1["map_50"] == 0.0
    assert s1["fp"] == 1 and s1["fp_per_scan"] == pytest.approx(1 / 3)


def test_cli_evaluate_prints_table_and_writes_json(tmp_path, capsys):
    ref = _reference(tmp_path / "ref")
    preds = {case: [_candidate(c, d, 0.7) for c, d in nods] for case, nods in NODULES.items()}
    pred = _predictions(tmp_path / "pred", preds)
    assert main(["evaluate", str(pred), "--reference", str(ref), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "stage1" in out
    assert json.loads((tmp_path / "m.json").read_text())["stage1"]["sensitivity"] == 1.0
    assert main(["evaluate", str(tmp_path / "nothing"), "--reference", str(ref)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nothing" in err[0]


def test_cli_evaluate_runs_without_importing_monai_or_torch(tmp_path):
    """``lungnod evaluate`` reads JSON / CSV / NIfTI only: a fresh process scores the same table without MONAI
    or torch loaded (about 0.6 s instead of 4 s on 2 cores)."""
    ref = _reference(tmp_path / "ref")
    preds = {case: [_candidate(c, d, 0.7) for c, d in nods] for case, nods in NODULES.items()}
    pred = _predictions(tmp_path / "pred", preds)
    script = textwrap.dedent(f"""
        import sys
        from lungnod_ext.apps.cli import main
        code = main(["evaluate", {str(pred)!r}, "--reference", {str(ref)!r}, "--json", {str(tmp_path / "m.json")!r}])
        print("exit", code, "loaded", sorted(m for m in ("monai", "torch", "ignite") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exit 0 loaded []" in proc.stdout.splitlines()
    assert json.loads((tmp_path / "m.json").read_text())["stage1"]["sensitivity"] == 1.0


def _lidc_reference(root: Path) -> Path:
    """Case A of NODULES with reader counts: the 8 mm nodule by 4 readers, the 6 mm one by 2; a LIDC non-nodule
    mark and a < 3 mm mark in ``small_marks.csv``; cases B, C as before (no count: they count)."""
    _reference(root)
    rows = list(csv.DictReader(open(root / "nodules.csv", newline="")))
    for row in rows:
        row["n_readers"] = {("A", "1"): "4", ("A", "2"): "2"}.get((row["case_id"], row["nodule_id"]), "")
    with open(root / "nodules.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    marks = [{"case_id": "A", "kind": "non_nodule", "centre_x_lps_mm": 50, "centre_y_lps_mm": 20, "centre_z_lps_mm": 10},
             {"case_id": "B", "kind": "small_nodule", "centre_x_lps_mm": 10, "centre_y_lps_mm": 50, "centre_z_lps_mm": 25}]
    with open(root / "small_marks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(marks[0]))
        w.writeheader()
        w.writerows(marks)
    return root


def test_luna16_reference_standard_ignores_few_reader_nodules_and_point_marks(tmp_path, capsys):
    """LUNA16: the 2-reader nodule, the non-nodule mark and the < 3 mm mark are irrelevant findings: a candidate
    on one (within 5 mm of a mark) is neither TP nor FP, in the FROC, the box and the candidate-level metrics;
    a miss of one is not counted. ``--min-readers 1`` counts the 2-reader nodule again (the marks stay out)."""
    ref = _lidc_reference(tmp_path / "ref")
    preds = {"A": [_candidate((20, 20, 10), 8.0, 0.9, 0.9),        # the 4-reader nodule: TP
                   _candidate((53, 22, 11), 4.0, 0.95, 0.95),      # 3.7 mm from the non-nodule mark: ignored
                   _candidate((5, 5, 5), 4.0, 0.6, 0.6)],          # nothing there: FP
             "B": [_candidate((30, 30, 15), 10.0, 0.8, 0.8),
                   _candidate((10, 50, 29), 3.0, 0.97, 0.97)],     # 4 mm from the < 3 mm mark: ignored
             "C": []}
    pred = _predictions(tmp_path / "pred", preds)
    s = evaluate_pipeline(pred, ref)["stage1+2"]
    assert s["n_reference_nodules"] == 2 and s["n_irrelevant_findings"] == 3
    assert s["n_candidates"] == 5 and s["n_candidates_on_irrelevant_findings"] == 2
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0) and s["sensitivity"] == 1.0
    # the one false positive (p 0.6) ranks below both nodules: found at 1/8 FP per scan
    assert s["froc"]["0.125"] == 1.0 and s["cpm"] == 1.0
    assert s["map_50"] == pytest.approx(1.0) and s["candidate_auc"] == 1.0
    every = evaluate_pipeline(pred, ref, min_readers=1)["stage1+2"]
    assert every["n_reference_nodules"] == 3 and every["n_irrelevant_findings"] == 2
    assert (every["tp"], every["fp"], every["fn"]) == (2, 1, 1) and every["sensitivity"] == pytest.approx(2 / 3)
    assert main(["evaluate", str(pred), "--reference", str(ref), "--min-readers", "1",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["stage1+2"]["n_reference_nodules"] == 3
    assert "n_irrelevant_findings" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(pred), "--reference", str(ref), "--min-readers", "0"])
    assert stop.value.code == 2 and "--min-readers: '0': at least 1" in capsys.readouterr().err
