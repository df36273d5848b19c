"""`lungnod train-models`: the recipe of the shipped models runs end to end (tiny settings: one training
series, one epoch each; nothing useful is learned, every stage runs), resumes, and its models load in the
bundles' inference configs; ``--seg`` config overrides reach both the segmentation training and its
candidate run, ``--cls`` overrides the classification training; the classifiers of ``cls_seeds`` (two in the
tiny recipe) are exported as one NoduleCNNEnsemble checkpoint; ``--until`` stops after a stage and
``--no-mlflow`` trains without MLflow (the segmenter on a GPU machine without it, the rest elsewhere)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import torch

from lungnod_ext.networks.network_setup import bundle_network
from lungnod_ext.networks.weights import checkpoint_members
from lungnod_ext.apps.pipeline import CLS_BUNDLE, SEG_BUNDLE

NARROW = "[64,32,16,8,4]"   # a segmentation decoder narrower than the bundle default


def _recipe_folder(out, done, training=None):
    """A ``lungnod train-models`` work folder as earlier stages left it: one converted series (an empty file,
    converted elsewhere), the stages ``done`` marked, and with ``training`` a cohort datalist of those items."""
    from lungnod_ext.apps.train_models import _mark

    (out / "converted" / "images").mkdir(parents=True)
    (out / "converted" / "images" / "LIDC-IDRI-0006_e7aa2240.nii.gz").touch()
    for stage in done:
        _mark(out / "stages" / f"{stage}.done", {})
    if training is not None:
        (out / "cohort").mkdir()
        (out / "cohort" / "datalist.json").write_text(json.dumps({"training": training, "validation": []}))
    return out


def test_tiny_recipe_end_to_end(lidc_root, tmp_path):
    out = tmp_path / "recipe"
    args = [sys.executable, "-m", "lungnod_ext", "train-models", "--out", str(out), "--lidc", str(lidc_root),
            "--tiny", "--hold-out", "LIDC-IDRI-0001", "--hold-out", "LIDC-IDRI-0002",
            "--seg", f"decoder_channels={NARROW}", "--seg", "inference_scales=[1.0]",
            "--cls", "network_def#centre_features=true"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # --until stops after a stage; the same command without it goes on from there
    first = subprocess.run(args + ["--until", "cohort"], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stopped after cohort" in first.stdout
    assert json.loads((out / "recipe.json").read_text())["stopped_after"] == "cohort"
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["cohort.done", "convert.done"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done before, kept") == 2, proc.stdout
    recipe = json.loads((out / "recipe.json").read_text())
    assert [c.split("_")[0] for c in recipe["train_series"]] == ["LIDC-IDRI-0006"]
    assert sorted(c.split("_")[0] for c in recipe["held_out_series"]) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    cohort = json.loads((out / "cohort" / "datalist.json").read_text())
    # two copies, one for validation, then one with masses (30-50 mm) for the segmenter's fine-tuning and one
    # with many small nodules (3-6 mm, the recipe's default types: mostly juxta-vascular) for the classifier only
    assert len(cohort["training"]) == 4 and len(cohort["validation"]) == 1
    assert all("LIDC-IDRI-0006" in e["image"] for e in cohort["training"] + cohort["validation"])
    assert [e["case"][-4:] for e in cohort["training"][-2:]] == ["_c03", "_c04"]
    mass_copy = json.loads((out / "cohort" / "nodules" / f"{cohort['training'][-2]['case']}.json").read_text())
    assert 4 <= len(mass_copy["inserted"]) <= 7
    small_copy = json.loads((out / "cohort" / "nodules" / f"{cohort['training'][-1]['case']}.json").read_text())
    assert 8 <= len(small_copy["inserted"]) <= 16
    assert all(n["mask_diameter_mm"] <= 7.5 for n in small_copy["inserted"])
    assert sum(n["type"] == "juxta_vascular" for n in small_copy["inserted"]) >= len(small_copy["inserted"]) / 3
    assert (out / "stages" / "classifier_small.done").is_file()
    assert (out / "stages" / "segmentation_masses.done").is_file()
    assert (out / "stages" / "classifier_masses.done").is_file()   # the mass copy redrawn for the classifier
    assert recipe["models"]["segmentation"] == str(out / "export" / "segmentation" / "model.pt")

    assert recipe["settings"]["seg_overrides"] == {"decoder_channels": json.loads(NARROW), "inference_scales": [1.0]}
    # the candidate run built the narrow network too (its strict checkpoint load would have failed otherwise)
    assert (out / "stages" / "candidates.done").is_file()
    # the candidate run added the dot filter's peaks (at most train_blob_candidates per volume); the classifier
    # learned from them (kinds blob_hit / blob_negative) and the recipe reports their share of nodules
    cand_docs = [json.loads(p.read_text())["candidates"] for p in (out / "runs" / "train_candidates").glob("*/*_candidates.json")]
    assert len(cand_docs) == 5
    blob_counts = [sum(c.get("detector") == "blob" for c in doc) for doc in cand_docs]
    assert all(0 < n <= 100 for n in blob_counts), blob_counts
    kinds = [e["kind"] for e in json.loads((out / "patches" / "datalist.json").read_text())["training"]]
    assert kinds.count("blob_negative") > 0
    assert 0.0 <= recipe["detector_priors"]["blob"] < 1.0
    # ... and the recipe's 30 faint peaks per volume beyond them (detector "faint", a prior of their own)
    assert all(sum(c.get("detector") == "faint" for c in doc) == 30 for doc in cand_docs)
    assert kinds.count("faint_negative") > 0 and 0.0 <= recipe["detector_priors"]["faint"] < 1.0
    seg_state = torch.load(out / "export" / "segmentation" / "model.pt", map_location="cpu", weights_only=True)["model"]
    bundle_network(SEG_BUNDLE, overrides={"decoder_channels": json.loads(NARROW)}).load_state_dict(seg_state, strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        bundle_network(SEG_BUNDLE).load_state_dict(seg_state, strict=True)
    # the export is the fine-tuned segmenter, which moved away from the first one
    first, tuned = (torch.load(out / "models" / d / "model.pt", map_location="cpu", weights_only=True)
                    for d in ("segmentation", "segmentation_masses"))
    first, tuned = first.get("model", first), tuned.get("model", tuned)
    key = "decoder.blocks.0.convs.conv_0.conv.weight"
    assert torch.equal(seg_state[key], tuned[key].half()) and not torch.equal(first[key], tuned[key])
    cls_path = out / "export" / "classification" / "model.pt"
    cls_state = torch.load(cls_path, map_location="cpu", weights_only=True)["model"]
    assert recipe["settings"]["cls_overrides"] == {"network_def#centre_features": True}
    assert recipe["settings"]["cls_seeds"] == [123, 1] and checkpoint_members(cls_path) == 2
    assert {k.split(".")[1] for k in cls_state} == {"0", "1"}
    assert not torch.equal(cls_state["members.0.head.4.weight"], cls_state["members.1.head.4.weight"])  # two seeds
    ckpt = {"ckpt_path": str(cls_path)}   # the inference config builds as many members as the checkpoint holds
    bundle_network(CLS_BUNDLE, overrides={"network_def#centre_features": True, **ckpt}).load_state_dict(cls_state, strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        bundle_network(CLS_BUNDLE, overrides=ckpt).load_state_dict(cls_state, strict=True)
    with sqlite3.connect(out / "mlruns.db") as db:
        runs = {r[0] for r in db.execute("select name from runs")}
    assert {"segmentation", "segmentation_masses", "classification", "classification_seed1"} <= runs
    # a rerun keeps every finished stage
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and again.stdout.count("done before, kept") == 11, again.stdout


def test_until_segmentation_without_mlflow(tmp_path, monkeypatch):
    """The device route: ``until="segmentation", tracking=False`` trains the segmenter with no MLflow
    arguments and stops there (recipe.json says so); with tracking the same stage gets MLflow's."""
    from lungnod_ext.apps import train_models as tm

    runs = []
    monkeypatch.setattr(tm, "bundle_run", lambda bundle, run_id, configs, overrides, log: runs.append(overrides))
    for tracking in (False, True):
        out = _recipe_folder(tmp_path / f"tracking_{tracking}", ("convert", "cohort"))
        settings = tm.RecipeSettings(seg_epochs=3, loader_workers=None if tracking else 3)
        recipe = tm.train_models(tmp_path, out, settings, until="segmentation", tracking=tracking,
                                 log=lambda *a: None)
        assert recipe["stopped_after"] == "segmentation" and recipe["settings"]["seg_epochs"] == 3
        assert (out / "stages" / "segmentation.done").is_file()
        assert not (out / "stages" / "candidates.done").exists()
    assert [r["epochs"] for r in runs] == [3, 3]
    # loader workers: as set, else none on a CPU-only machine (this one), recorded in recipe.json
    assert [r["num_workers"] for r in runs] == [3, tm.default_loader_workers()] == [3, 0]
    assert recipe["settings"]["loader_workers"] == 0
    assert "tracking" not in runs[0] and "tracking_uri" not in runs[0]
    assert runs[1]["tracking"] == "mlflow" and runs[1]["tracking_uri"].endswith("tracking_True/mlruns.db")
    for bad in ("bogus", "classification"):   # no stop between the classifiers and the export
        with pytest.raises(ValueError, match="not a stage"):
            tm.train_models(tmp_path, tmp_path / "x", until=bad)


def test_patches_are_cut_with_the_classifier_overrides_geometry(tmp_path, monkeypatch):
    """``--cls slab_mm=[...] --cls fine_spacing_mm=0.5`` cuts the recipe's patches with those planes and spacing,
    as the classifier then trains with them (before, only fine_spacing_mm reached the patches and a slab_mm
    override trained a network whose channels did not match its patches); other overrides stay the network's."""
    from lungnod_ext.apps import patch_dataset
    from lungnod_ext.apps import train_models as tm

    cuts = []
    monkeypatch.setattr(patch_dataset, "build_patch_dataset",
                        lambda *a, **kw: cuts.append(kw) or tmp_path / "datalist.json")
    for n, overrides in enumerate(({}, {"slab_mm": [-2.5, 0.0, 2.5], "fine_spacing_mm": 0.5, "dropout": 0.1})):
        out = _recipe_folder(tmp_path / f"run{n}", ("convert", "cohort", "segmentation", "masses",
                                                   "segmentation_masses", "classifier_masses", "classifier_small",
                                                   "candidates"))
        tm.train_models(tmp_path, out, tm.RecipeSettings(cls_overrides=overrides), until="patches", tracking=False,
                        log=lambda *a: None)
    geometry = [{k: kw[k] for k in kw if k in patch_dataset.PATCH_GEOMETRY_KEYS} for kw in cuts]
    assert geometry == [{"spatial_dims": 2}, {"spatial_dims": 2, "slab_mm": [-2.5, 0.0, 2.5], "fine_spacing_mm": 0.5}]
    assert "dropout" not in cuts[1]


def test_candidates_keep_the_mass_rule_the_shipped_classifiers_learned(tmp_path, monkeypatch):
    """The recipe's candidates stage makes the training candidates with mass_min_diameter_mm 30 and the dot filter
    on every slice thickness as it is (blob_slice_profile_mm null), the rules of the shipped classifiers' training
    candidates, though inference keeps segments from 20 mm and sees thin slices at 2.5 mm; a --seg override wins."""
    from lungnod_ext.apps import pipeline
    from lungnod_ext.apps import train_models as tm

    seen = []
    monkeypatch.setattr(pipeline, "run_bundle_inference", lambda *a, **kw: seen.append(a[5]))
    for n, overrides in enumerate(({}, {"mass_min_diameter_mm": 20.0, "blob_slice_profile_mm": 2.5})):
        out = _recipe_folder(tmp_path / f"run{n}", ("convert", "cohort", "segmentation", "masses",
                                                   "segmentation_masses", "classifier_masses", "classifier_small"),
                             training=[{"image": "images/a.nii.gz"}])
        tm.train_models(tmp_path, out, tm.RecipeSettings(seg_overrides=overrides), until="candidates",
                        tracking=False, log=lambda *a: None)
    assert [o["mass_min_diameter_mm"] for o in seen] == [30.0, 20.0]
    assert [o["blob_slice_profile_mm"] for o in seen] == [None, 2.5]
    inference = json.loads((tm.SEG / "configs" / "inference.json").read_text())
    assert inference["mass_min_diameter_mm"] == 20.0 and inference["blob_slice_profile_mm"] == 2.5


def test_faint_candidates_reach_the_candidate_run_and_match_inference(tmp_path, monkeypatch):
    """``faint_candidates`` is the candidate run's ``blob_faint_candidates`` (the dot filter's faint quota the
    classifiers learn from; 30 made the shipped classifiers); ``inference_faint_candidates``' default is what the
    segmentation inference config adds per scan (0: off)."""
    from lungnod_ext.apps import pipeline
    from lungnod_ext.apps import train_models as tm

    seen = []
    monkeypatch.setattr(pipeline, "run_bundle_inference", lambda *a, **kw: seen.append(a[5]))
    for n, settings in enumerate((tm.RecipeSettings(faint_candidates=12), tm.RecipeSettings())):
        out = _recipe_folder(tmp_path / f"run{n}", ("convert", "cohort", "segmentation", "masses",
                                                   "segmentation_masses", "classifier_masses", "classifier_small"),
                             training=[{"image": "images/a.nii.gz"}])
        tm.train_models(tmp_path, out, settings, until="candidates", tracking=False, log=lambda *a: None)
    inference = json.loads((tm.SEG / "configs" / "inference.json").read_text())
    assert [o["blob_faint_candidates"] for o in seen] == [12, 30]
    assert tm.RecipeSettings().inference_faint_candidates == inference["blob_faint_candidates"] == 0


def test_a_bundle_run_stopped_by_bad_data_raises_that_error(tmp_path):
    """A recipe stage's ``monai.bundle run`` that stops on our bad-input check (here patches cut with other planes
    than the classifier's config) raises that one-line error again, path first, with the log named, instead of
    the last lines of MONAI's traceback; the classifier is not trained."""
    from data_prep.errors import InputNotFoundError
    from lungnod_ext.apps.bundle_runs import bundle_run
    from lungnod_ext.apps.train_models import CLS

    datalist = tmp_path / "patches" / "datalist.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"spatial_dims": 2, "slab_mm": [0.0], "training": [], "validation": []}))
    log = tmp_path / "logs" / "classification_train.log"
    with pytest.raises(InputNotFoundError) as exc:
        bundle_run(CLS, "training", ["configs/train.json"], {"dataset_dir": str(datalist.parent),
                   "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}, log)
    assert exc.value.path == str(datalist)
    assert exc.value.problem.startswith("patches cut with slab_mm [0.0] (the config has [-5.0, -2.5, 0.0, 2.5, 5.0])")
    assert exc.value.problem.endswith(f"(lung_nodule_ct_classification training, log {log})")
    assert "Traceback" in log.read_text() and not (tmp_path / "models").exists()


def test_cli_passes_classifier_seeds_and_overrides(tmp_path, monkeypatch):
    """``lungnod train-models --cls-seeds 123 --seg decoder_channels=[...]`` (the fast pair's recipe) reaches the
    recipe as one classifier seed and the override; without it, the three seeds of the shipped ensemble; a
    seed that is no integer is a usage error (exit 2)."""
    from lungnod_ext.apps import cli
    from lungnod_ext.apps import train_models as tm

    seen = []
    monkeypatch.setattr(tm, "train_models", lambda lidc, out, settings, **kw: seen.append(settings))
    base = ["train-models", "--out", str(tmp_path / "r"), "--lidc", str(tmp_path)]
    assert cli.main(base + ["--cls-seeds", "123", "--seg", "decoder_channels=[128,64,32,16,8]"]) == 0
    assert cli.main(base) == 0
    assert [s.cls_seeds for s in seen] == [[123], [123, 1, 2]]
    assert seen[0].seg_overrides == {"decoder_channels": [128, 64, 32, 16, 8]} and seen[1].seg_overrides == {}
    with pytest.raises(SystemExit) as exc:
        cli.main(base + ["--cls-seeds", "1,x"])
    assert exc.value.code == 2
    assert cli.main(base + ["--ground-glass-hu=-750,-400"]) == 0
    assert seen[2].ground_glass_hu == (-750.0, -400.0) and seen[1].ground_glass_hu == (-600.0, -400.0)
    for bad in ("-400,-750", "-750", "-300,-200", "a,b"):
        with pytest.raises(SystemExit) as exc:
            cli.main(base + [f"--ground-glass-hu={bad}"])
        assert exc.value.code == 2
    # the fast pair's classifier learned the segmenter's mass copies: --cls-mass-diaphragm-share 0
    assert cli.main(base + ["--cls-mass-diaphragm-share", "0"]) == 0
    assert seen[3].cls_mass_diaphragm_share == 0.0 and seen[1].cls_mass_diaphragm_share == 0.5
    for flag in ("--cls-mass-diaphragm-share", "--dependent-density"):
        for bad in ("1.5", "-0.1", "half"):
            with pytest.raises(SystemExit) as exc:
                cli.main(base + [flag, bad])
            assert exc.value.code == 2
    assert cli.main(base + ["--faint-candidates", "0"]) == 0
    assert seen[4].faint_candidates == 0 and seen[1].faint_candidates == tm.RecipeSettings().faint_candidates == 30
    assert seen[4].inference_faint_candidates == seen[1].inference_faint_candidates == 0
    assert cli.main(base + ["--small-copies", "6"]) == 0
    assert seen[5].small_copies == 6 and seen[1].small_copies == tm.RecipeSettings().small_copies == 3
    for flag in ("--faint-candidates", "--small-copies", "--inference-faint-candidates"):
        for bad in ("-1", "2.5", "many"):
            with pytest.raises(SystemExit) as exc:
                cli.main(base + [flag, bad])
            assert exc.value.code == 2
    assert cli.main(base + ["--small-types", "juxta_vascular=0.7, solid=0.3"]) == 0
    assert seen[6].small_types == (("juxta_vascular", 0.7), ("solid", 0.3))
    assert seen[1].small_types == tm.RecipeSettings().small_types == tm.RECIPE_SMALL_TYPES
    assert cli.main(base + ["--inference-faint-candidates", "30"]) == 0
    assert seen[7].inference_faint_candidates == 30 and seen[7].faint_candidates == 30
    assert cli.main(base + ["--dependent-density", "0"]) == 0
    assert seen[8].dependent_density_share == 0.0 and seen[1].dependent_density_share == 0.5
    # the help lists the types by hand (the parser imports no numpy): it names every one there is
    from data_prep.synth.nodules import NODULE_TYPES

    train_help = next(a.help for a in cli.build_parser()._subparsers._group_actions[0].choices["train-models"]._actions
                      if "--small-types" in a.option_strings)
    assert all(t in train_help for t in NODULE_TYPES)
    assert ",".join(f"{t}={w:g}" for t, w in tm.RECIPE_SMALL_TYPES) in train_help   # the default it names
    for bad in ("vessel=1", "solid", "solid=-1", "solid=x", "solid=0", "solid=1,solid=2", "solid=inf"):
        with pytest.raises(SystemExit) as exc:
            cli.main(base + ["--small-types", bad])
        assert exc.value.code == 2


def test_ground_glass_density_reaches_the_cohort_and_the_masses(tmp_path, monkeypatch):
    """``RecipeSettings.ground_glass_hu`` and ``dependent_density_share`` are the cohort's (and the mass copies')
    ``CohortOptions`` values; the defaults are those the shipped models were trained with."""
    from data_prep import training_cohort
    from lungnod_ext.apps import train_models as tm

    seen = []

    def record(stage, out, options):
        seen.append((stage, options.ground_glass_hu, options.dependent_density_share))
        return out

    monkeypatch.setattr(training_cohort, "build_training_cohort",
                        lambda conv, out, cases, options: record("cohort", out, options))
    monkeypatch.setattr(training_cohort, "add_mass_copies",
                        lambda out, cases, conv, n, options: record("masses", out, options))
    for n, (band, share) in enumerate(((None, None), ((-750.0, -400.0), 0.4))):
        out = _recipe_folder(tmp_path / f"run{n}", ("convert", "segmentation"))
        settings = (tm.RecipeSettings() if band is None
                    else tm.RecipeSettings(ground_glass_hu=band, dependent_density_share=share))
        tm.train_models(tmp_path, out, settings, until="masses", tracking=False, log=lambda *a: None)
    assert seen == [("cohort", (-600.0, -400.0), 0.5), ("masses", (-600.0, -400.0), 0.5),
                    ("cohort", (-750.0, -400.0), 0.4), ("masses", (-750.0, -400.0), 0.4)]


def test_classifier_masses_redraw_the_mass_copies_after_the_segmenter(tmp_path, monkeypatch):
    """After segmentation_masses the recipe redraws the mass copies with cls_mass_diaphragm_share (0.5) of their
    juxta-pleural masses on the diaphragm for the classifier's candidates; 0 keeps the segmenter's copies; a work
    folder whose candidates came before this stage is refused with a line that says what to do."""
    from data_prep import training_cohort
    from lungnod_ext.apps import pipeline
    from lungnod_ext.apps import train_models as tm

    seen = []
    monkeypatch.setattr(training_cohort, "add_mass_copies", lambda out, cases, conv, n, options, diaphragm_share=None:
                        seen.append((n, diaphragm_share)) or out)
    monkeypatch.setattr(tm, "bundle_run", lambda bundle, run_id, configs, overrides, log: seen.append(overrides["run_name"]))
    monkeypatch.setattr(pipeline, "run_bundle_inference", lambda *a, **kw: seen.append("candidates"))

    before = ("convert", "cohort", "segmentation")
    for share in (0.5, 0.0):
        out = _recipe_folder(tmp_path / f"share{share}", before, training=[])
        recipe = tm.train_models(tmp_path, out, tm.RecipeSettings(cls_mass_diaphragm_share=share, small_copies=0),
                                 until="candidates", tracking=False, log=lambda *a: None)
        assert recipe["settings"]["cls_mass_diaphragm_share"] == share
    assert seen == [(9, None), "segmentation_masses", (9, 0.5), "candidates",
                    (9, None), "segmentation_masses", "candidates"]
    assert (tmp_path / "share0.5" / "stages" / "classifier_masses.done").is_file()
    assert not (tmp_path / "share0.0" / "stages" / "classifier_masses.done").exists()
    old = _recipe_folder(tmp_path / "old", before + ("masses", "segmentation_masses", "candidates"), training=[])
    with pytest.raises(ValueError, match="candidates were made before the classifier_masses stage"):
        tm.train_models(tmp_path, old, until="patches", tracking=False, log=lambda *a: None)
    assert not (old / "stages" / "classifier_masses.done").exists()


def test_default_loader_workers():
    """None on a CPU (the training takes every core), with a GPU up to 8, two cores kept for the main process."""
    from lungnod_ext.apps.train_models import default_loader_workers

    assert [default_loader_workers(cuda=False, cores=n) for n in (2, 16)] == [0, 0]
    assert [default_loader_workers(cuda=True, cores=n) for n in (1, 2, 4, 16, 64)] == [0, 0, 2, 8, 8]


def test_classifier_small_copies_join_the_candidates_but_not_the_priors(tmp_path, monkeypatch):
    """``small_copies`` N: after the mass copies the recipe appends N copies per series with many 3-6 mm nodules
    (numbered after the mass copies) before the candidate run; the detector priors leave them out (enriched on
    purpose); without it no such stage runs and no case is left out. Candidates made before the stage are
    refused with a line that says what to do."""
    from data_prep import training_cohort
    from lungnod_ext.apps import patch_dataset, pipeline
    from lungnod_ext.apps import train_models as tm

    seen = []
    monkeypatch.setattr(training_cohort, "add_small_copies",
                        lambda out, cases, conv, n, mass_copies, options, type_weights:
                        seen.append(("small", n, mass_copies, type_weights)) or out)
    monkeypatch.setattr(pipeline, "run_bundle_inference", lambda *a, **kw: seen.append("candidates"))
    monkeypatch.setattr(patch_dataset, "build_patch_dataset", lambda *a, **kw: seen.append("patches"))
    monkeypatch.setattr(tm, "bundle_run", lambda bundle, run_id, configs, overrides, log: None)
    monkeypatch.setattr(tm, "export_fp16", lambda ckpt, dest: dest)
    skipped = []
    monkeypatch.setattr(patch_dataset, "detector_prior",
                        lambda *a, detector, skip_cases, **kw: skipped.append(list(skip_cases)) or 0.01)
    before = ("convert", "cohort", "segmentation", "masses", "segmentation_masses", "classifier_masses")
    for n in (2, 0):
        out = _recipe_folder(tmp_path / f"small{n}", before, training=[])
        recipe = tm.train_models(tmp_path, out, tm.RecipeSettings(small_copies=n, cls_seeds=[123],
                                                                 small_types=(("juxta_vascular", 1.0),)),
                                 tracking=False, log=lambda *a: None)
        assert recipe["settings"]["small_copies"] == n and recipe["detector_priors"]["blob"] == 0.01
    assert seen == [("small", 2, 9, (("juxta_vascular", 1.0),)), "candidates", "patches", "candidates", "patches"]
    case = "LIDC-IDRI-0006_e7aa2240"
    assert skipped[0] == [f"{case}_c20", f"{case}_c21"] and skipped[-1] == []
    old = _recipe_folder(tmp_path / "old", before + ("candidates",), training=[])
    with pytest.raises(ValueError, match="candidates were made before the classifier_small stage"):
        tm.train_models(tmp_path, old, tm.RecipeSettings(small_copies=2), until="patches", tracking=False,
                        log=lambda *a: None)


def test_install_sets_the_inference_configs_the_models_need(tmp_path):
    """``--install`` copies both models and writes what the default inference configs must match: this run's
    ``detector_priors``, the dot filter's ``blob_max_candidates`` / ``blob_faint_candidates`` and ``--seg
    pleural_caps`` / ``blob_slice_profile_mm`` settings; every other line of the hand-formatted segmentation config stays as it was, and a
    config without such a line is refused before it is written."""
    import shutil

    from lungnod_ext.apps import train_models as tm

    seg, cls = tmp_path / "seg", tmp_path / "cls"
    for src, dst in ((tm.SEG, seg), (tm.CLS, cls)):
        shutil.copytree(src / "configs", dst / "configs")
        (dst / "models").mkdir()
    for name in ("s.pt", "c.pt"):
        (tmp_path / name).write_bytes(name.encode())
    settings = tm.RecipeSettings(inference_faint_candidates=30,
                                 seg_overrides={"pleural_caps": True, "blob_slice_profile_mm": None})
    changed = tm.install_models(tmp_path / "s.pt", tmp_path / "c.pt", {"blob": 0.041, "faint": 0.002}, settings,
                                seg, cls)
    assert (seg / "models" / "model.pt").read_bytes() == b"s.pt" and (cls / "models" / "model.pt").read_bytes() == b"c.pt"
    seg_config = json.loads((seg / "configs" / "inference.json").read_text())
    assert (seg_config["blob_max_candidates"], seg_config["blob_faint_candidates"], seg_config["pleural_caps"],
            seg_config["blob_slice_profile_mm"]) == (50, 30, True, None)
    assert json.loads((cls / "configs" / "inference.json").read_text())["detector_priors"] == {"blob": 0.041, "faint": 0.002}
    assert changed["seg/configs/inference.json"] == {"blob_max_candidates": 50, "blob_faint_candidates": 30,
                                                     "pleural_caps": True, "blob_slice_profile_mm": None}
    before = (tm.SEG / "configs" / "inference.json").read_text().splitlines()
    after = (seg / "configs" / "inference.json").read_text().splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 3   # faint quota, caps, profile
    # the shipped pair's own settings and priors (recipe_dependent_density_0001.json) leave both configs as they are
    shutil.copyfile(tm.SEG / "configs" / "inference.json", seg / "configs" / "inference.json")
    tm.install_models(tmp_path / "s.pt", tmp_path / "c.pt", {"blob": 0.0469, "faint": 0.00279}, tm.RecipeSettings(), seg, cls)
    assert (seg / "configs" / "inference.json").read_text() == (tm.SEG / "configs" / "inference.json").read_text()
    assert (cls / "configs" / "inference.json").read_text() == (tm.CLS / "configs" / "inference.json").read_text()
    (seg / "configs" / "inference.json").write_text('{"blob_max_candidates": 50}\n')
    (tmp_path / "s2.pt").write_bytes(b"other")
    with pytest.raises(ValueError, match="no single one-line top-level 'blob_max_candidates'"):
        tm.install_models(tmp_path / "s2.pt", tmp_path / "c.pt", {}, tm.RecipeSettings(), seg, cls)
    assert (seg / "models" / "model.pt").read_bytes() == b"s.pt"      # nothing installed


def test_the_recipe_defaults_are_the_shipped_models_run(tmp_path):
    """``lungnod train-models`` with no flags is the run that made the shipped models (segmentation 0.14.0 /
    classification 0.14.0: ``tests/benchmarks/results/recipe_dependent_density_0001.json``, every setting but the
    machine's loader processes) and
    ``--install`` with its priors leaves the shipped inference configs as they are: the classification
    ``detector_priors`` are that run's, the faint detector's included (a user who turns the faint quota on gets
    those candidates scored at their prior, not as if half were nodules)."""
    from dataclasses import asdict

    from lungnod_ext.apps import train_models as tm

    run = json.loads((tm.REPO_ROOT / "tests" / "benchmarks" / "results" / "recipe_dependent_density_0001.json").read_text())
    defaults = json.loads(json.dumps(asdict(tm.RecipeSettings())))      # tuples as JSON lists, as recipe.json has them
    differ = {k: (v, defaults.get(k)) for k, v in run["settings"].items() if k != "loader_workers" and defaults.get(k) != v}
    assert differ == {}
    cls_config = json.loads((tm.CLS / "configs" / "inference.json").read_text())
    assert cls_config["detector_priors"] == run["detector_priors"] == {"blob": 0.0469, "faint": 0.00279}
    seg_config = json.loads((tm.SEG / "configs" / "inference.json").read_text())
    assert (seg_config["blob_max_candidates"], seg_config["blob_faint_candidates"]) == (
        tm.RecipeSettings().blob_candidates, tm.RecipeSettings().inference_faint_candidates)


def test_bundle_run_passes_values_that_monai_bundle_reads_back():
    """The recipe's ``--seg`` / ``--cls`` overrides reach ``monai.bundle run`` as python-fire reads them: before,
    ``--cls batch_augmentation=false`` went as the text 'false' (JSON), true to Python, and the classifiers were
    batch-augmented anyway (the bundles' switch check now refuses the text: found so in session 39)."""
    from fire.parser import DefaultParseValue

    from lungnod_ext.apps.bundle_runs import cli_args

    overrides = {"batch_augmentation": False, "amp": True, "output_prior": None, "epochs": 3, "learning_rate": 1e-3,
                 "patch_size": (160, 160), "detector_priors": {"blob": 0.0375, "faint": 0.0037},
                 "network_def#centre_features": False, "device": "cpu", "spacing": [1.5, 1.5, -1]}
    args = cli_args(overrides)
    assert args[:4] == ["--batch_augmentation", "False", "--amp", "True"]
    read = {args[i][2:]: DefaultParseValue(args[i + 1]) for i in range(0, len(args), 2)}
    assert read == {**overrides, "patch_size": [160, 160]}
    assert read["batch_augmentation"] is False and read["network_def#centre_features"] is False
