"""lungnod_ext.inference.classify: a balanced classifier's probability turned into a posterior per detector."""

from __future__ import annotations

import json

import pytest
import torch

from lungnod_ext.inference.classify import WriteClassificationd, posterior_probability


def test_posterior_probability_is_bayes_with_the_prior():
    """p 0.9 (odds 9) with a prior of 0.1 (odds 1/9) -> odds 1 -> 0.5; p 0.5 with any prior -> the prior."""
    assert posterior_probability(0.9, 0.1) == pytest.approx(0.5)
    assert posterior_probability(0.5, 0.099) == pytest.approx(0.099)
    assert posterior_probability(1.0, 0.1) < 1.0 and posterior_probability(0.0, 0.1) > 0.0


def test_writer_applies_priors_only_to_listed_detectors(tmp_path):
    """A "blob" candidate gets the posterior and keeps the network's value as classifier_probability; the
    segmenter's candidate (and one without a detector) keep the network's probability; a prior outside
    (0, 1) is refused."""
    cands = [{"id": 1, "detector": "segmentation"}, {"id": 2, "detector": "blob"}, {"id": 3}]
    writer = WriteClassificationd(output_dir=str(tmp_path), detector_priors={"blob": 0.1})
    out = writer({"pred": torch.tensor([0.9, 0.9, 0.9]), "candidates": json.dumps(cands), "case": "c"})
    probs = [c["probability"] for c in out["candidates"]]
    assert probs == pytest.approx([0.9, 0.5, 0.9])
    assert out["candidates"][1]["classifier_probability"] == pytest.approx(0.9)
    saved = json.loads((tmp_path / "c_classified.json").read_text())["candidates"]
    assert [c["probability"] for c in saved] == pytest.approx(probs)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        WriteClassificationd(detector_priors={"blob": 0.0})
