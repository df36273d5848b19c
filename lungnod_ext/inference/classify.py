"""Stage-2 inference pieces for the classification bundle's ``inference.json``.

A dataset item is ``{"image": <CT NIfTI>, "candidates": <stage-1 candidates JSON>}`` (the segmentation
bundle's ``<case>_candidates.json``), or ``{"image": <one patch image>}`` as MONAI Label sends it.

* :class:`CandidatePatchesd` turns the item into ``image`` = float32 ``(N, C, *patch)`` HU patches, one per
  candidate, cut in world space (:func:`lungnod_ext.inference.patches.extract_patches`); a single patch image
  is resized to the patch size (N = 1). ``candidates`` holds the candidate dicts as JSON text (so batch
  collation leaves it alone), ``case`` the case id.
* :class:`PatchBatchInferer` runs the network over the N patches of one item in mini-batches and returns
  ``(1, N)`` logits (``(1, 0)`` for a scan without candidates).
* :class:`WriteClassificationd` writes ``<output_dir>/<case>_classified.json`` / ``.csv``: every candidate
  with ``probability`` (sigmoid of the logit), atomically.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.transforms import MapTransform

from data_prep.nifti_io import read_nifti
from lungnod_ext.inference.candidates import write_candidates
from lungnod_ext.data.inputs import NIFTI_SUFFIXES
from lungnod_ext.inference.patches import DEFAULTS, extract_patches, patch_channels


def _case(path: str) -> str:
    name = Path(path).name
    for suffix in (*NIFTI_SUFFIXES, ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load_single_patch(path: str, spatial_dims: int, patch_size: Sequence[int], channels: int = 1) -> np.ndarray:
    """A single patch image (.npy or NIfTI; 2D or 3D, HU) resized to ``patch_size`` -> (1, channels, *patch).

    For a 2-D classifier with ``channels`` planes: a (channels, H, W) array is taken as those planes, any
    other 3-D array gives its central slice, and a single plane is repeated as every channel."""
    if path.lower().endswith(".npy"):
        arr = np.load(path).astype(np.float32)
    else:
        import nibabel as nib

        arr = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        arr = arr.transpose(tuple(range(arr.ndim))[::-1])  # NIfTI (x, y[, z]) -> array order ([z,] y, x)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and spatial_dims == 2:
        arr = arr if channels > 1 and arr.shape[0] == channels else arr[arr.shape[0] // 2]
    if arr.ndim == spatial_dims:
        arr = np.repeat(arr[None], channels, axis=0)
    if arr.ndim != spatial_dims + 1:
        raise ValueError(f"{path}: a {arr.ndim}D patch for a {spatial_dims}D classifier")
    t = torch.from_numpy(np.ascontiguousarray(arr))[None]
    mode = "trilinear" if spatial_dims == 3 else "bilinear"
    return F.interpolate(t, size=tuple(patch_size), mode=mode, align_corners=False).numpy()


class CandidatePatchesd(MapTransform):
    """``{"image", "candidates"?}`` -> ``image`` (N, C, *patch) HU patches (C = 1, or one plane per
    ``slab_mm`` offset; twice that with ``fine_spacing_mm``, see :func:`extract_patches`), ``candidates``
    list, ``case`` id."""

    def __init__(self, keys="image", candidates_key: str = "candidates", spatial_dims: int = 3,
                 patch_size: Sequence[int] | None = None, spacing_mm: float | None = None,
                 slab_mm: Sequence[float] | None = None, fine_spacing_mm: float | None = None) -> None:
        super().__init__(keys)
        self.slab_mm = [float(v) for v in slab_mm] if slab_mm else None
        self.fine_spacing_mm = float(fine_spacing_mm) if fine_spacing_mm else None
        self.candidates_key = candidates_key
        self.spatial_dims = int(spatial_dims)
        self.patch_size = tuple(patch_size or DEFAULTS[self.spatial_dims]["patch_size"])
        self.spacing_mm = float(spacing_mm or DEFAULTS[self.spatial_dims]["spacing_mm"])

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = str(d[key])
            source = d.get(self.candidates_key)
            if source is None:  # a single patch (MONAI Label)
                patches = _load_single_patch(image, self.spatial_dims, self.patch_size,
                                             patch_channels(self.slab_mm, self.fine_spacing_mm))
                candidates = [{"id": 1, "source": image}]
            else:
                doc = json.loads(Path(str(source)).read_text()) if not isinstance(source, (list, dict)) else source
                candidates = list(doc["candidates"] if isinstance(doc, dict) else doc)
                if candidates:
                    hu, geometry = read_nifti(image)
                    patches = extract_patches(hu, geometry, [c["centre_lps"] for c in candidates], self.patch_size,
                                              self.spacing_mm, self.spatial_dims, self.slab_mm, self.fine_spacing_mm)
                else:
                    patches = np.zeros((0, patch_channels(self.slab_mm, self.fine_spacing_mm), *self.patch_size),
                                       np.float32)
            d[key] = torch.from_numpy(patches)
            d[self.candidates_key] = json.dumps(candidates)  # text: survives batch collation unchanged
            d["case"] = _case(image)
        return d


class PatchBatchInferer(Inferer):
    """Runs the network on the patches of one item: input (1, N, C, *patch) -> (1, N) logits."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = int(batch_size)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim < 4:
            raise ValueError(f"expected (1, N, C, *patch) patches, got {tuple(inputs.shape)}")
        patches = inputs.reshape(-1, *inputs.shape[2:])
        outs = [network(patches[i:i + self.batch_size], *args, **kwargs)[:, 0]
                for i in range(0, patches.shape[0], self.batch_size)]
        logits = torch.cat(outs) if outs else patches.new_zeros((0,))
        return logits.reshape(inputs.shape[0], -1)


def posterior_probability(p: float, prior: float) -> float:
    """A probability of a classifier trained on balanced classes (its odds = the likelihood ratio) -> the
    probability for candidates of which a fraction ``prior`` are nodules (Bayes: odds x prior odds)."""
    p = min(max(float(p), 1e-7), 1.0 - 1e-7)
    odds = p / (1.0 - p) * prior / (1.0 - prior)
    return odds / (1.0 + odds)


def apply_detector_priors(candidates: list[dict], probs: Sequence[float], detector_priors: Mapping[str, float]) -> None:
    """Set each candidate's ``probability`` (in place) from the balanced classifier's ``probs`` (aligned):
    for a candidate whose ``detector`` has a prior, :func:`posterior_probability` with it, the network's
    own value kept as ``classifier_probability``; otherwise the network's value."""
    for c, p in zip(candidates, probs):
        prior = detector_priors.get(str(c.get("detector")))
        if prior is None:
            c["probability"] = float(p)
        else:
            c["classifier_probability"] = float(p)
            c["probability"] = posterior_probability(p, prior)


class WriteClassificationd(MapTransform):
    """Write ``<output_dir>/<case>_classified.json`` / ``.csv`` from ``pred`` ((N,) probabilities) and the
    item's candidates; adds ``probability`` to each candidate dict.

    ``detector_priors`` ({detector: fraction}): the classifier was trained on balanced classes; a candidate
    whose ``detector`` is listed (e.g. "blob", :mod:`lungnod_ext.inference.blob_candidates`, of which about
    one in ten is a nodule) gets ``probability`` = :func:`posterior_probability` with that prior and keeps
    the network's own value as ``classifier_probability``; other candidates get the network's value."""

    def __init__(self, keys="pred", candidates_key: str = "candidates", output_dir: str = "./eval",
                 detector_priors: Mapping[str, float] | None = None) -> None:
        super().__init__(keys)
        self.candidates_key = candidates_key
        self.output_dir = Path(output_dir)
        self.detector_priors = {str(k): float(v) for k, v in (detector_priors or {}).items()}
        for k, v in self.detector_priors.items():
            if not 0.0 < v < 1.0:
                raise ValueError(f"detector_priors[{k!r}] = {v}: a prior must lie strictly between 0 and 1")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = torch.as_tensor(d[key]).detach().cpu().reshape(-1).tolist()
            raw = d.get(self.candidates_key) or []
            candidates = [dict(c) for c in (json.loads(raw) if isinstance(raw, str) else raw)]
            if len(probs) != len(candidates):
                raise ValueError(f"{len(probs)} probabilities for {len(candidates)} candidates")
            apply_detector_priors(candidates, probs, self.detector_priors)
            case = str(d.get("case", "case"))
            write_candidates(candidates, self.output_dir / f"{case}_classified.json",
                             self.output_dir / f"{case}_classified.csv", {"case": case, "score": "probability"})
            d[self.candidates_key] = candidates
        return d


def check_candidates_json(path) -> list[dict]:
    """A stage-1 candidates JSON (``{"candidates": [...]}`` or a list) -> its candidates; InputNotFoundError
    (one line naming the file) when it cannot be parsed or a candidate has no 3-number ``centre_lps`` (mm)."""
    from data_prep.errors import InputNotFoundError

    p = Path(str(path))
    if not p.is_file():
        raise InputNotFoundError(p, "candidates JSON not found")
    try:
        doc = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(p, f"candidates file is not valid JSON ({str(exc).splitlines()[0][:100]})") from None
    candidates = doc.get("candidates") if isinstance(doc, dict) else doc
    if not isinstance(candidates, list):
        raise InputNotFoundError(p, 'not a candidates JSON (need {"candidates": [...]} or a list of candidates)')
    for n, c in enumerate(candidates):
        centre = c.get("centre_lps") if isinstance(c, dict) else None
        if not (isinstance(centre, (list, tuple)) and len(centre) == 3
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in centre)):
            raise InputNotFoundError(p, f"candidate {n} has no centre_lps [x, y, z] in mm")
    return candidates


def resolve_classification_inputs(path, candidates=None, check: bool = True, assume_hu: bool = False) -> list[dict]:
    """Items for the classification bundle's inference.

    ``path`` is a CT image (with ``candidates``, a stage-1 candidates JSON) or a single patch image
    (without), or a datalist JSON: a list of items or a dict whose ``testing`` (else ``validation``, else
    ``training``) list is used; relative paths are resolved against the JSON's folder.
    With ``check``, every CT that comes with candidates passes :func:`lungnod_ext.data.input_checks.check_ct_volume`
    (4D/RGB, NaN, constant, all-air, too small, not HU unless ``assume_hu``) and its candidates :func:`check_candidates_json`, before any
    model runs. Raises InputNotFoundError (one line naming the file) for a missing or unusable file.
    """
    items = _classification_items(path, candidates)
    if check:
        from lungnod_ext.data.input_checks import check_ct_volume

        for item in items:
            if item.get("candidates") is not None:
                check_ct_volume(item["image"], assume_hu=assume_hu)
                if isinstance(item["candidates"], str):
                    check_candidates_json(item["candidates"])
    return items


def _classification_items(path, candidates=None) -> list[dict]:
    from data_prep.errors import InputNotFoundError

    p = Path(str(path))
    if not p.exists():
        raise InputNotFoundError(p, "no such file or folder")
    if candidates is not None and not Path(str(candidates)).is_file():
        raise InputNotFoundError(candidates, "candidates JSON not found")
    if p.suffix.lower() == ".json":
        doc = json.loads(p.read_text())
        if isinstance(doc, dict):
            key = next((k for k in ("testing", "validation", "training") if doc.get(k)), None)
            if key is None:
                raise InputNotFoundError(p, "datalist has no testing/validation/training entries")
            doc = doc[key]
        items = []
        for e in doc:
            e = {"image": e} if isinstance(e, str) else dict(e)
            for k in ("image", "candidates"):
                if isinstance(e.get(k), str) and not Path(e[k]).is_absolute():
                    e[k] = str((p.parent / e[k]).resolve())
            items.append({k: e[k] for k in ("image", "candidates", "label", "case", "kind") if k in e})
        return items
    item = {"image": str(p.resolve())}
    if candidates is not None:
        item["candidates"] = str(Path(str(candidates)).resolve())
    return [item]
