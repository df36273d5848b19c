"""The models shipped in bundles/*/models/model.pt: they load with no flags, find the real nodule of a
scan they never saw (LIDC-IDRI-0001, held out of their training), and the demo reports it.

Accuracy figures (leave one series out, FROC, Dice) come from tests/benchmarks/bench_models.py; these tests
pin what a user sees first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lungnod_ext.networks.network_setup import bundle_network
from lungnod_ext.apps.pipeline import CLS_BUNDLE, SEG_BUNDLE

NODULE_LPS = np.array([56.369, 86.3209, -115.9945])     # LIDC-IDRI-0001's nodule: 4 readers' consensus
NODULE_DIAMETER_MM = 24.5679
MAX_FALSE_POSITIVES = 1                                 # reported (probability >= 0.5), whole scan; measured 0
AORTA_EDGE_LPS = np.array([34.1, 30.5, -225.3])          # segmentation 0.11.0's one false positive (p 0.61)
BUNDLES = {"segmentation": SEG_BUNDLE, "classification": CLS_BUNDLE}


def run(args, timeout=600, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lungnod_ext", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("name,weights,configs", [
    (name, weights, configs) for name in BUNDLES for weights, configs in [
        ("model.pt", ("configs/inference.json",)),
        ("model_fast.pt", ("configs/inference.json", "configs/inference_fast.json"))]])
def test_shipped_checkpoint_loads_strictly_and_is_small(name, weights, configs):
    path = BUNDLES[name] / "models" / weights
    assert path.is_file(), f"{path} is not shipped"
    assert path.stat().st_size < 50 * 2 ** 20
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())   # fp16 storage
    net = bundle_network(BUNDLES[name], configs)
    net.load_state_dict(state, strict=True)                  # the inference configs match the network
    meta = json.loads((BUNDLES[name] / "configs" / "metadata.json").read_text())
    assert tuple(int(v) for v in meta["version"].split(".")) >= (0, 2, 0)                 # numbers, not strings
    assert "shipped model" in meta["changelog"][meta["version"]]
    card = (BUNDLES[name] / "docs" / "README.md").read_text()
    assert "Model card" in card and "LIDC-IDRI-0001" in card and "CC BY 3.0" in card


def detect(series, out, *flags) -> dict:
    """``lungnod detect <series> --out <out> [flags]`` in a fresh process; its first case's nodules."""
    t = time.perf_counter()
    proc = run(["detect", str(series), "--out", str(out), *flags])
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    case = json.loads((out / "summary.json").read_text())["cases"][0]
    nodules = json.loads((out / case["case"] / f"{case['case']}_nodules.json").read_text())["candidates"]
    return {"out": out, "case": case, "nodules": nodules, "seconds": seconds, "stdout": proc.stdout}


def hits_and_distances(nodules) -> tuple[list[dict], list[float]]:
    """The reported nodules whose centre is within the readers' nodule radius (LUNA16 rule), and every
    reported centre's distance (mm) from the readers' centre."""
    dist = [float(np.linalg.norm(np.asarray(n["centre_lps"]) - NODULE_LPS)) for n in nodules]
    return [n for n, d in zip(nodules, dist) if d < NODULE_DIAMETER_MM / 2], dist


@pytest.fixture(scope="module")
def detected(lidc_series_dir, tmp_path_factory):
    return detect(lidc_series_dir, tmp_path_factory.mktemp("shipped") / "out")    # no checkpoint flags


def test_detect_with_no_flags_finds_the_unseen_lidc_nodule(detected):
    nodules = detected["nodules"]
    hits, dist = hits_and_distances(nodules)
    assert hits, f"the nodule was not reported; nodules at {[round(d) for d in dist]} mm"
    best = max(hits, key=lambda n: n["probability"])
    assert best["probability"] >= 0.5 and nodules[0]["probability"] >= best["probability"] - 0.2
    assert 12.0 < best["diameter_mm"] < 35.0, best["diameter_mm"]               # readers: 24.6 mm
    assert len(nodules) - len(hits) <= MAX_FALSE_POSITIVES, [(round(d), round(n["probability"], 2)) for n, d in zip(nodules, dist)]
    assert detected["seconds"] < 120


def test_the_contrast_filled_aortas_edge_is_no_candidate(detected):
    """The descending aorta's edge (+232 HU), reported at p 0.61 before the contrast rule, is no candidate at all:
    the U-Net's segment there is mostly >= 150 HU tissue continuing beyond it (``max_enhanced_share``)."""
    case = detected["case"]["case"]
    candidates = json.loads((detected["out"] / case / f"{case}_candidates.json").read_text())["candidates"]
    near = [round(float(np.linalg.norm(np.asarray(c["centre_lps"]) - AORTA_EDGE_LPS)), 1) for c in candidates]
    assert len(candidates) >= 20 and min(near) > 10.0, sorted(near)[:3]


def test_the_unseen_nodule_is_outlined_as_its_readers_outline_it(detected):
    """The reported nodule's voxels (its id in ``<case>_labels.nii.gz``, outlines refined to the partial-volume
    edge) against the 4 readers' 50 % consensus that ``detect`` converted from the LIDC XML: Dice >= 0.85
    (measured 0.861 with segmentation 0.14.0, 0.884 with 0.10.0; 0.834 before the refinement; goal 0.80)."""
    from data_prep.nifti_io import read_nifti

    case = detected["case"]["case"]
    hits, _ = hits_and_distances(detected["nodules"])
    labels, _ = read_nifti(detected["out"] / case / f"{case}_labels.nii.gz")
    consensus, _ = read_nifti(detected["out"] / "converted" / "labels" / f"{case}.nii.gz")
    outline, reference = labels == int(hits[0]["id"]), consensus > 0
    dice = 2.0 * (outline & reference).sum() / (outline.sum() + reference.sum())
    assert dice >= 0.85, dice
    assert hits[0]["outline_added_voxels"] > 0


def test_the_unseen_nodule_is_measured_as_calipers_measure_its_consensus(detected):
    """Long / short axis on the axial slice where it is longest (Fleischner / Lung-RADS): the report's
    figures are those of the reported outline, on the slice of the consensus's own long axis or the next one
    (2.5 mm; segmentation 0.14.0 measures on the next one), and within 20 % / 15 % of the consensus's (measured
    28.3 x 26.4 mm against 33.8 x 27.7: the readers traced a spicule the outline leaves out); the example scan's
    reference axes are this consensus's."""
    from data_prep.nifti_io import read_nifti
    from lungnod_ext.apps.demo import EXAMPLE
    from lungnod_ext.inference.measurements import axial_axes

    case = detected["case"]["case"]
    hits, _ = hits_and_distances(detected["nodules"])
    labels, geometry = read_nifti(detected["out"] / case / f"{case}_labels.nii.gz")
    consensus, _ = read_nifti(detected["out"] / "converted" / "labels" / f"{case}.nii.gz")
    spacing = geometry.spacing[::-1]
    ours, readers = axial_axes(labels == int(hits[0]["id"]), spacing), axial_axes(consensus > 0, spacing)
    n = hits[0]
    assert (n["long_axis_mm"], n["short_axis_mm"]) == (round(ours["long_axis_mm"], 2), round(ours["short_axis_mm"], 2))
    assert n["axes_slice_k"] == ours["slice"] and abs(ours["slice"] - readers["slice"]) <= 1, (ours, readers)
    assert 0.8 * readers["long_axis_mm"] <= n["long_axis_mm"] <= 1.1 * readers["long_axis_mm"], (n["long_axis_mm"], readers)
    assert 0.85 * readers["short_axis_mm"] <= n["short_axis_mm"] <= 1.1 * readers["short_axis_mm"], (n["short_axis_mm"], readers)
    assert n["mean_axial_diameter_mm"] == round((n["long_axis_mm"] + n["short_axis_mm"]) / 2, 1)
    terminal = (f"{n['id']:>3}. p {n['probability']:.2f}  solid, long x short axis {n['long_axis_mm']:.1f} x "
                f"{n['short_axis_mm']:.1f} ({n['mean_axial_diameter_mm']:.1f}) mm")
    assert terminal in detected["stdout"], detected["stdout"]               # what `lungnod detect` prints
    reference = json.loads(EXAMPLE.read_text())["nodules"][0]["axes_mm"]
    assert reference == [round(readers["long_axis_mm"], 2), round(readers["short_axis_mm"], 2)]


def test_the_unseen_nodule_reads_solid_as_its_readers_rated_it(detected):
    """Attenuation from HU (lungnod_ext.inference.attenuation): the 4 readers' median texture is 5 (solid); the
    reported outline is solid at -300 HU over most of its voxels (measured 0.64) and its solid component is
    the nodule itself (measured 28.6 mm mean axial diameter against the outline's 29.0). The demo's example
    carries the same readers' texture as the converted LIDC table."""
    import csv

    from lungnod_ext.apps.demo import EXAMPLE
    from lungnod_ext.inference.attenuation import reader_attenuation

    with open(detected["out"] / "converted" / "nodules.csv", newline="") as f:
        texture = float(next(csv.DictReader(f))["texture_median"])
    assert texture == json.loads(EXAMPLE.read_text())["nodules"][0]["texture_median"] == 5.0
    assert reader_attenuation(texture) == "solid"
    hits, _ = hits_and_distances(detected["nodules"])
    n = hits[0]
    assert n["attenuation"] == "solid", n
    assert 0.5 <= n["solid_fraction"] <= 0.8
    assert 0.9 * n["mean_axial_diameter_mm"] <= n["solid_mean_axial_diameter_mm"] <= 1.05 * n["mean_axial_diameter_mm"]


def test_detect_fast_finds_the_unseen_lidc_nodule(lidc_series_dir, tmp_path):
    """``--fast``: the shipped fast pair (models/model_fast.pt of both bundles) finds it too."""
    nodules = detect(lidc_series_dir, tmp_path / "out", "--fast", "--no-explain")["nodules"]
    hits, dist = hits_and_distances(nodules)
    assert hits and max(n["probability"] for n in hits) >= 0.5, [round(d) for d in dist]
    assert len(nodules) - len(hits) <= MAX_FALSE_POSITIVES
    assert 12.0 < hits[0]["diameter_mm"] < 35.0, hits[0]["diameter_mm"]


def test_demo_reports_the_example_nodule(tmp_path):
    proc = run(["demo", "--out", str(tmp_path / "demo")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "FOUND   nodule 1 (24.6 mm, 4 readers)" in proc.stdout, proc.stdout
    assert "long x short axis" in proc.stdout and "(readers' 33.8 x 27.7)" in proc.stdout, proc.stdout
    assert "(readers' 33.8 x 27.7); solid (readers' texture: solid)" in proc.stdout, proc.stdout
    comparison = json.loads((tmp_path / "demo" / "comparison.json").read_text())
    assert comparison["nodules"][0]["found"] and comparison["nodules"][0]["probability"] >= 0.5
    long_mm, short_mm = comparison["nodules"][0]["axes_mm"]
    assert 0.8 * 33.76 <= long_mm <= 1.1 * 33.76 and 0.85 * 27.69 <= short_mm <= 1.1 * 27.69    # measured 28.7 x 25.2
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    pngs = list((tmp_path / "demo" / "report").glob("*/overlays/*.png"))
    assert pngs, "no overlay written"


def test_example_scan_is_small_and_attributed():
    from lungnod_ext.apps.demo import EXAMPLE, EXAMPLE_DIR

    ref = json.loads(EXAMPLE.read_text())
    image = EXAMPLE_DIR / ref["image"]
    assert image.stat().st_size < 15 * 2 ** 20
    assert "Armato" in (EXAMPLE_DIR / "ATTRIBUTION").read_text() and "CC BY 3.0" in ref["licence"]
    assert ref["nodules"][0]["n_readers"] == 4
    # the LIDC point marks inside the slab, LUNA16's irrelevant findings: three < 3 mm nodules, five non-nodules
    kinds = [m["kind"] for m in ref["small_marks"]]
    assert kinds.count("small_nodule") == 3 and kinds.count("non_nodule") == 5


def test_demo_comparison_does_not_count_findings_at_point_marks():
    """A reported finding within 5 mm of a non-nodule mark (the lesion beside the left lung's base) is not a
    false positive; one 6 mm from every mark is."""
    from lungnod_ext.apps.demo import EXAMPLE, compare_with_readers

    ref = json.loads(EXAMPLE.read_text())
    nodule = {"id": 1, "centre_lps": ref["nodules"][0]["centre_lps_mm"], "probability": 0.9, "diameter_mm": 24.0}
    at_mark = {"id": 2, "centre_lps": [118.6, -27.0, -193.3], "probability": 0.93, "diameter_mm": 14.4}
    away = {"id": 3, "centre_lps": [120.875, -24.7469, -201.0], "probability": 0.6, "diameter_mm": 5.0}
    result = compare_with_readers([nodule, at_mark, away], [nodule, at_mark, away], ref)
    assert result["nodules"][0]["found"] and result["nodules"][0]["probability"] == 0.9
    assert [n["id"] for n in result["at_small_marks"]] == [2] and [n["id"] for n in result["false_positives"]] == [3]
