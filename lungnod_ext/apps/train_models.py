"""``lungnod train-models``: the recipe that reproduces the shipped models from real LIDC-IDRI series.

Stages (each one's output is kept under ``--out``; a rerun skips the stages already done):

1. ``converted/``: ``data-prep convert`` of the LIDC-IDRI folder (DICOM + XML -> int16 HU NIfTI, consensus
   masks, ``nodules.csv``, ``small_marks.csv``);
2. ``cohort/``: every training series (all but ``--hold-out``) as ``copies`` volumes with simulated nodules
   imaged into its real lungs and scanner variety (:mod:`data_prep.training_cohort`); with
   ``dependent_density_share`` (``--dependent-density``, 0.5 by default: the shipped models' since
   segmentation 0.14.0 / classification 0.14.0) that share of the copies also gets posterior subpleural density
   as background (:mod:`data_prep.dependent_density`);
3. ``models/segmentation``: the segmentation bundle's ``train.json`` (2.5D ResNet-18 U-Net) on the cohort;
   then ``mass_copies`` more volumes per series with masses of 30-50 mm among the nodules join the cohort
   (:func:`data_prep.training_cohort.add_mass_copies`) and ``models/segmentation_masses`` fine-tunes the
   segmenter on all of them for ``mass_epochs`` (LIDC's nodules stop at 30 mm; a user's lung cancer may not);
   ``classifier_masses`` then draws those copies again in place with ``cls_mass_diaphragm_share`` of their
   juxta-pleural masses on the diaphragm's dome, for the stages below (the segmenter fine-tuned on such copies
   outlined those masses no better; the classifier trained on them reports more of them, session 28-29);
   ``classifier_small`` (``small_copies`` > 0; 3 by default) appends that many copies per series with 10-16
   nodules of 3-6 mm each, of the types ``small_types`` (default :data:`RECIPE_SMALL_TYPES`, 70 %
   juxta-vascular), for the classifier only (:func:`data_prep.training_cohort.add_small_copies`; left out of
   the detector priors below);
4. ``runs/train_candidates``: the trained segmenter over the cohort, with the top ``train_blob_candidates``
   dot-filter peaks per volume (:mod:`lungnod_ext.inference.blob_candidates`; plus ``faint_candidates`` faint
   ones beyond them, detector "faint", 30 by default) -> their false positives
   (vessel crossings and branch points, bronchial walls, pleura) become the classifier's hard negatives;
5. ``patches/`` + ``models/classification``: the classification bundle's ``train.json`` on 2.5D patches
   (real + inserted nodules, the segmenter's hits; its false positives and random lung), once per seed of
   ``cls_seeds`` (``models/classification`` for the first, ``models/classification_seed<s>`` for the others);
6. ``export/``: both checkpoints stored fp16 as ``{"model": state_dict}``, the classifiers merged into one
   :class:`lungnod_ext.networks.classifier.NoduleCNNEnsemble` (``install=True`` copies them to
   ``bundles/*/models/model.pt`` and sets the inference configs to match: :func:`install_models`; the faint
   quota at inference is ``inference_faint_candidates``, 0 by default, not the one learned from) and
   ``recipe.json`` (settings, series, seconds per stage, and
   ``detector_priors``: the share of nodules among the top ``blob_candidates`` dot-filter peaks of the
   training volumes, and among their faint ones and pleural caps when the candidates have them, the value of the
   classification bundle's ``detector_priors`` for these models).

Both trainings are logged to MLflow (``<out>/mlruns.db``, experiment ``lungnod_train_models``). The held-out
series is never read after conversion: score it with ``tests/benchmarks/bench_models.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from data_prep.errors import InputNotFoundError
from data_prep.nifti_io import atomic_path, write_text_atomic
from data_prep.synth.nodules import GROUND_GLASS_HU, ground_glass_range
from lungnod_ext.data.bundle_paths import REPO_ROOT
from lungnod_ext.apps.bundle_runs import bundle_run

SEG = REPO_ROOT / "bundles" / "lung_nodule_ct_segmentation"
CLS = REPO_ROOT / "bundles" / "lung_nodule_ct_classification"
DEFAULT_LIDC = REPO_ROOT.parent / "shared" / "data" / "lidc"
# the small copies' nodule types (classification 0.11.0): small juxta-vascular nodules, which the two training
# patients teach least (data_prep.training_cohort.SMALL_TYPE_WEIGHTS, session 31's mix, is add_small_copies' own)
RECIPE_SMALL_TYPES = (("juxta_vascular", 0.7), ("solid", 0.1), ("part_solid", 0.1), ("ground_glass", 0.1))


@dataclass
class RecipeSettings:
    """What the recipe trains. The defaults made the shipped models (segmentation 0.14.0, classification 0.14.0,
    from scratch in one go: ``tests/benchmarks/results/recipe_dependent_density_0001.json``, 77 min on session 45's
    2 CPU cores: the segmenter 22 min, its mass fine-tuning 6, the classifiers' candidates 8, the three classifiers
    11.6-12.4 min each). Slower cores take longer: 1 h 48 min in session 38 (``recipe_oneshot.json``)."""

    hold_out: list[str] = field(default_factory=lambda: ["LIDC-IDRI-0001"])   # patient ids never trained on
    copies: int = 10                 # cohort volumes per training series (copy 0 = the real scan)
    val_copies: int = 1
    ground_glass_hu: tuple[float, float] = GROUND_GLASS_HU   # HU of the cohort's (and masses') ground glass, halos
    dependent_density_share: float = 0.5   # copies with posterior subpleural density (data_prep.dependent_density)
    seg_epochs: int = 140            # 10 steps of 16 slices each per epoch with two training series
    seg_val_interval: int = 10
    seg_patch_size: tuple[int, int] = (160, 160)
    seg_learning_rate: float = 1e-3
    mass_copies: int = 9             # volumes per series with masses (30-50 mm) added after the segmentation (0: none)
    mass_epochs: int = 16            # ... and the fine-tuning on the whole cohort with them
    mass_learning_rate: float = 3e-4
    cls_mass_diaphragm_share: float = 0.5   # the mass copies redrawn for the classifier, this share of their
    #                                         juxta-pleural masses on the diaphragm's dome (0: the segmenter's copies)
    small_copies: int = 3            # volumes per series with 10-16 nodules of 3-6 mm, for the classifier only (0: none)
    small_types: tuple = RECIPE_SMALL_TYPES   # (nodule type, share) of the small copies' nodules
    cls_epochs: int = 20
    cls_val_interval: int = 2
    cls_learning_rate: float = 1e-3
    cls_seeds: list[int] = field(default_factory=lambda: [123, 1, 2])   # one classifier per seed, averaged
    positive_copies: int = 4
    small_positive_copies: int | None = None   # copies of each nodule < 6 mm (None: positive_copies)
    positive_jitter_fraction: float = 0.0      # positive shifts up to this share of the diameter (>= 2 mm)
    random_negatives_per_case: int = 24
    seed: int = 0
    workers: int = 2
    train_blob_candidates: int = 100   # dot-filter peaks per cohort volume the classifier learns from
    blob_candidates: int = 50          # ... and per scan at inference (segmentation blob_max_candidates)
    faint_candidates: int = 30         # faint dot-filter peaks (ground glass) per volume beyond those, learned from
    inference_faint_candidates: int = 0   # ... and per scan at inference (segmentation blob_faint_candidates; detector
    #                                       "faint"): off, at their prior they changed no measured figure and without
    #                                       it they cost false positives (tests/benchmarks/HISTORY.md, session 34)
    loader_workers: int | None = None   # DataLoader processes of both trainings (None: default_loader_workers())
    seg_overrides: dict = field(default_factory=dict)   # segmentation config ids for training and candidates
    cls_overrides: dict = field(default_factory=dict)   # classification config ids for training

    @classmethod
    def tiny(cls, hold_out: list[str]) -> "RecipeSettings":
        """A few minutes: proves every stage runs (tests), trains nothing useful."""
        return cls(hold_out=hold_out, copies=2, val_copies=1, seg_epochs=1, seg_val_interval=1,
                   seg_patch_size=(96, 96), mass_copies=1, mass_epochs=1, cls_epochs=1, cls_val_interval=1, positive_copies=1,
                   small_copies=1, random_negatives_per_case=4, cls_seeds=[123, 1])


def default_loader_workers(cuda: bool | None = None, cores: int | None = None) -> int:
    """DataLoader processes for the trainings: none on a CPU (the training uses every core; on 2 cores a
    worker only competes with it), up to 8 with a GPU (which otherwise waits for the CPU's batches: 4
    workers still left an H200 waiting 62-70 % of each step, session 17), two cores left to the main process."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    cores = (os.cpu_count() or 1) if cores is None else cores
    return min(8, max(0, cores - 2)) if cuda else 0


def _patient(case_id: str) -> str:
    return case_id.rsplit("_", 1)[0]


def _done(marker: Path) -> bool:
    return marker.is_file()


def _mark(marker: Path, info: dict) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(info, indent=1, default=str) + "\n")


def export_fp16(ckpt, dest: Path) -> Path:
    """``{"model": state_dict}`` with floating tensors stored as fp16 (half the file; loading into the
    fp32 network converts back) -> ``dest`` (written atomically). ``ckpt``: one checkpoint, or a list of
    NoduleCNN checkpoints merged as the members of one NoduleCNNEnsemble (a list of one stays as it is)."""
    from lungnod_ext.networks.classifier import ensemble_state_dict

    ckpts = [Path(c) for c in ckpt] if isinstance(ckpt, (list, tuple)) else [Path(ckpt)]
    for c in ckpts:
        if not c.is_file():
            raise InputNotFoundError(c, "training wrote no best model (did a validation run? see the training log)")
    states = [torch.load(c, map_location="cpu", weights_only=True) for c in ckpts]
    states = [s.get("model", s) for s in states]
    state = states[0] if len(states) == 1 else ensemble_state_dict(states)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    with atomic_path(dest) as tmp:
        torch.save({"model": half}, tmp)
    return dest


def _set_top_level(config_text: str, key: str, value, path: Path) -> str:
    """``config_text`` with the value of one top-level ``"key": value`` line (4-space indent, one line) replaced,
    the rest of the hand-formatted file kept byte for byte."""
    pattern = re.compile(rf'^(    "{re.escape(key)}": )(.*?)(,?)$', re.M)
    if len(pattern.findall(config_text)) != 1:
        raise ValueError(f"{path}: no single one-line top-level {key!r} to set")
    return pattern.sub(lambda m: m.group(1) + json.dumps(value) + m.group(3), config_text)


def install_models(seg_model: Path, cls_model: Path, priors: dict, settings: RecipeSettings,
                   seg_bundle: Path = SEG, cls_bundle: Path = CLS) -> dict:
    """Copy the exported models to ``<bundle>/models/model.pt`` and set what the default inference configs must
    match for them: the classification ``detector_priors`` (this run's), the segmentation ``blob_max_candidates``
    / ``blob_faint_candidates`` (the recipe's ``blob_candidates`` / ``inference_faint_candidates``) and ``pleural_caps``
    / ``blob_slice_profile_mm`` when ``--seg`` set them. Every file is written atomically. Returns {config: {id: value}} as set."""
    seg_ids = {"blob_max_candidates": settings.blob_candidates,
               "blob_faint_candidates": settings.inference_faint_candidates}
    if "pleural_caps" in settings.seg_overrides:
        seg_ids["pleural_caps"] = bool(settings.seg_overrides["pleural_caps"])
    if "blob_slice_profile_mm" in settings.seg_overrides:
        seg_ids["blob_slice_profile_mm"] = settings.seg_overrides["blob_slice_profile_mm"]
    seg_config = seg_bundle / "configs" / "inference.json"
    seg_text = seg_config.read_text()
    for key, value in seg_ids.items():   # every config edited in memory first: a bad one stops before any write
        seg_text = _set_top_level(seg_text, key, value, seg_config)
    cls_config = cls_bundle / "configs" / "inference.json"
    config = json.loads(cls_config.read_text())
    config["detector_priors"] = dict(priors)
    for src, bundle in ((seg_model, seg_bundle), (cls_model, cls_bundle)):
        with atomic_path(bundle / "models" / "model.pt") as tmp:
            shutil.copyfile(src, tmp)
    write_text_atomic(seg_config, seg_text)
    write_text_atomic(cls_config, json.dumps(config, indent=4) + "\n")
    return {str(seg_config.relative_to(seg_bundle.parent)): seg_ids,
            str(cls_config.relative_to(cls_bundle.parent)): {"detector_priors": dict(priors)}}


TRAINING_MASS_MIN_DIAMETER_MM = 30.0   # candidates stage: the lung-core rule's mass exemption (see candidates())
# where --until may stop (after the patches only the classifiers and the export are left: no stop there)
STAGES = ("convert", "cohort", "segmentation", "masses", "segmentation_masses", "classifier_masses",
          "classifier_small", "candidates", "patches")


class _StoppedAfter(Exception):
    """Raised by a stage named ``until``: the recipe stops there (a rerun without it goes on)."""


def train_models(lidc_dir, out_dir, settings: RecipeSettings | None = None, install: bool = False,
                 log=print, until: str | None = None, tracking: bool = True) -> dict:
    """Run the recipe (module doc); returns the ``recipe.json`` content.

    ``until``: stop after this stage (one of :data:`STAGES`), e.g. "segmentation" to train the segmenter on a
    GPU machine and the rest elsewhere from the same ``out_dir``. ``tracking=False``: no MLflow logging (where
    mlflow is not installed)."""
    if until is not None and until not in STAGES:
        raise ValueError(f"until={until!r}: not a stage of the recipe {STAGES}")
    from data_prep.convert import ConvertOptions, convert_dicom_root
    from data_prep.training_cohort import (CohortOptions, add_mass_copies, add_small_copies, build_training_cohort,
                                           small_copy_names)
    from lungnod_ext.apps.patch_dataset import (PATCH_GEOMETRY_KEYS, PRIOR_DETECTORS, build_patch_dataset,
                                                detector_prior)
    from lungnod_ext.apps.pipeline import run_bundle_inference

    s = settings or RecipeSettings()
    if s.loader_workers is None:   # recorded in recipe.json as used
        s = replace(s, loader_workers=default_loader_workers())
    loader_workers = s.loader_workers
    if not s.cls_seeds:   # before any stage runs, not after the segmentation's hour
        raise ValueError("cls_seeds is empty: the recipe trains one classifier per seed")
    lidc, out = Path(lidc_dir), Path(out_dir).resolve()
    if not lidc.exists():
        raise InputNotFoundError(lidc, "no such folder (the LIDC-IDRI series with their XML)")
    out.mkdir(parents=True, exist_ok=True)
    logs, marks = out / "logs", out / "stages"
    tracking = {"tracking": "mlflow", "tracking_uri": f"sqlite:///{out / 'mlruns.db'}",
                "experiment_name": "lungnod_train_models"} if tracking else {}
    seconds: dict[str, float] = {}
    recipe_path = out / "recipe.json"
    if recipe_path.is_file():
        seconds.update(json.loads(recipe_path.read_text()).get("seconds", {}))

    def stage(name: str, fn) -> None:
        marker = marks / f"{name}.done"
        if _done(marker):
            log(f"[train-models] {name}: done before, kept")
        else:
            log(f"[train-models] {name} ...")
            t = time.perf_counter()
            info = fn() or {}
            seconds[name] = round(time.perf_counter() - t, 1)
            _mark(marker, {**info, "seconds": seconds[name]})
            log(f"[train-models] {name}: {seconds[name]:.0f} s")
        if name == until:
            raise _StoppedAfter(name)

    try:
        converted = out / "converted"
        stage("convert", lambda: {"report": str(convert_dicom_root(lidc, converted, ConvertOptions(workers=s.workers,
                                                                                                    progress=False)))})
        cases = sorted(p.name[:-7] for p in (converted / "images").glob("*.nii.gz"))
        train_cases = [c for c in cases if _patient(c) not in s.hold_out]
        held_out = [c for c in cases if _patient(c) in s.hold_out]
        if not train_cases:
            raise InputNotFoundError(lidc, f"no series left to train on after holding out {s.hold_out}")

        cohort = out / "cohort"
        cohort_options = CohortOptions(copies=s.copies, val_copies=s.val_copies, seed=s.seed, workers=s.workers,
                                       ground_glass_hu=ground_glass_range(s.ground_glass_hu),
                                       dependent_density_share=s.dependent_density_share)
        stage("cohort", lambda: {"datalist": str(build_training_cohort(converted, cohort, train_cases, cohort_options))})

        seg_models = out / "models" / "segmentation"
        stage("segmentation", lambda: bundle_run(SEG, "training", ["configs/train.json"], {
            **tracking, "run_name": "segmentation", "dataset_dir": str(cohort),
            "output_dir": str(out / "runs" / "segmentation"), "ckpt_dir": str(seg_models), "epochs": s.seg_epochs,
            "val_interval": s.seg_val_interval, "patch_size": list(s.seg_patch_size),
            "learning_rate": s.seg_learning_rate, "num_workers": loader_workers, **s.seg_overrides},
            logs / "segmentation_train.log"))
        if s.mass_copies > 0:
            stage("masses", lambda: {"datalist": str(add_mass_copies(cohort, train_cases, converted, s.mass_copies,
                                                                     cohort_options))})
            first = seg_models
            seg_models = out / "models" / "segmentation_masses"
            stage("segmentation_masses", lambda: bundle_run(SEG, "training", ["configs/train.json"], {
                **tracking, "run_name": "segmentation_masses", "dataset_dir": str(cohort),
                "output_dir": str(out / "runs" / "segmentation_masses"), "ckpt_dir": str(seg_models),
                "pretrained_path": str(first / "model.pt"), "epochs": s.mass_epochs,
                "val_interval": max(1, s.mass_epochs // 2), "patch_size": list(s.seg_patch_size),
                "learning_rate": s.mass_learning_rate, "num_workers": loader_workers, **s.seg_overrides},
                logs / "segmentation_masses_train.log"))
            if s.cls_mass_diaphragm_share > 0:
                if _done(marks / "candidates.done") and not _done(marks / "classifier_masses.done"):
                    raise ValueError(f"{out}: its candidates were made before the classifier_masses stage; delete "
                                     "stages/candidates.done and the stages after it, or set cls_mass_diaphragm_share 0")
                stage("classifier_masses", lambda: {"datalist": str(add_mass_copies(
                    cohort, train_cases, converted, s.mass_copies, cohort_options,
                    diaphragm_share=s.cls_mass_diaphragm_share))})

        small_names = []
        if s.small_copies > 0:
            if _done(marks / "candidates.done") and not _done(marks / "classifier_small.done"):
                raise ValueError(f"{out}: its candidates were made before the classifier_small stage; delete "
                                 "stages/candidates.done and the stages after it, or set small_copies 0")
            mass_copies = max(0, s.mass_copies)
            stage("classifier_small", lambda: {"datalist": str(add_small_copies(
                cohort, train_cases, converted, s.small_copies, mass_copies, cohort_options,
                type_weights=s.small_types))})
            small_names = small_copy_names(train_cases, cohort_options, mass_copies, s.small_copies)

        cand_dir = out / "runs" / "train_candidates"

        def candidates():
            items = json.loads((cohort / "datalist.json").read_text())
            images = [{"image": str(cohort / e["image"])} for e in items["training"] + items["validation"]]
            run_bundle_inference(SEG, ["configs/inference.json"], images, cand_dir, seg_models / "model.pt",
                                 {"write_overlays": False, "blob_max_candidates": s.train_blob_candidates,
                                  "blob_faint_candidates": s.faint_candidates,
                                  # the zoomed pass over whole slices, as the shipped classifier learned (a
                                  # superset of the candidates inference zooms around since segmentation 0.7.0)
                                  "zoom_threshold": None,
                                  # the mass rule the shipped classifiers' candidates were made with (segmentation
                                  # 0.11.0-0.12.0); inference keeps segments from 20 mm since 0.12.1
                                  "mass_min_diameter_mm": TRAINING_MASS_MIN_DIAMETER_MM,
                                  # the dot filter on every slice thickness as it is, as the shipped classifiers
                                  # learned (inference sees thin slices at 2.5 mm since segmentation 0.15.0)
                                  "blob_slice_profile_mm": None, **s.seg_overrides})
            return {"images": len(images)}

        stage("candidates", candidates)
        patches = out / "patches"
        # the patches are cut with the geometry the classifier is trained on (--cls slab_mm=... etc.)
        geometry = {"spatial_dims": 2, **{k: v for k, v in s.cls_overrides.items() if k in PATCH_GEOMETRY_KEYS}}
        stage("patches", lambda: {"datalist": str(build_patch_dataset(
            cohort, patches, candidates_dir=cand_dir, seed=s.seed,
            positive_copies=s.positive_copies, random_negatives_per_case=s.random_negatives_per_case,
            small_positive_copies=s.small_positive_copies, jitter_fraction=s.positive_jitter_fraction, **geometry))})
        member_dirs = []
        for k, seed in enumerate(s.cls_seeds):
            name = "classification" if k == 0 else f"classification_seed{seed}"
            member_dirs.append(out / "models" / name)
            stage(name, lambda name=name, seed=seed, ckpt_dir=member_dirs[-1]: bundle_run(
                CLS, "training", ["configs/train.json"], {**tracking, "run_name": name, "dataset_dir": str(patches),
                "output_dir": str(out / "runs" / name), "ckpt_dir": str(ckpt_dir), "epochs": s.cls_epochs,
                "val_interval": s.cls_val_interval, "learning_rate": s.cls_learning_rate, "num_workers": loader_workers,
                **s.cls_overrides, "seed": seed}, logs / f"{name}_train.log"))

        # the small-nodule copies are enriched on purpose: the priors come from the other volumes
        priors = {d: float(f"{p:.3g}") for d in PRIOR_DETECTORS   # 3 significant figures: never rounded to 0
                  if (p := detector_prior(patches / "datalist.json", "training", max_rank=s.blob_candidates,
                                          detector=d, skip_cases=small_names)) is not None}
        export = out / "export"
        seg_out = export_fp16(seg_models / "model.pt", export / "segmentation" / "model.pt")
        cls_out = export_fp16([d / "model.pt" for d in member_dirs], export / "classification" / "model.pt")
        recipe = {"settings": asdict(s), "lidc_dir": str(lidc), "train_series": train_cases, "held_out_series": held_out,
                  "seconds": seconds, "models": {"segmentation": str(seg_out), "classification": str(cls_out)},
                  "detector_priors": priors,
                  "mlflow": f"mlflow ui --backend-store-uri sqlite:///{out / 'mlruns.db'}"}
        recipe_path.write_text(json.dumps(recipe, indent=1) + "\n")
        if install:
            changed = install_models(seg_out, cls_out, priors, s)
            log(f"[train-models] installed into {SEG / 'models'} and {CLS / 'models'}; inference configs set: "
                f"{json.dumps(changed)}")
        if priors:
            log(f"[train-models] classification detector_priors: {json.dumps(priors)} (nodules among the top "
                f"{s.blob_candidates} dot-filter candidates of the training volumes, and among their pleural caps; "
                "the classification bundle's inference config takes it)")
        log(f"[train-models] models: {seg_out}, {cls_out}; recipe: {recipe_path}")
        log(f"[train-models] MLflow: {recipe['mlflow']}")
        return recipe
    except _StoppedAfter:
        partial = {"settings": asdict(s), "lidc_dir": str(lidc), "seconds": seconds, "stopped_after": until}
        recipe_path.write_text(json.dumps(partial, indent=1) + "\n")
        log(f"[train-models] stopped after {until} (--until); the same command without it goes on from {out}")
        return partial
