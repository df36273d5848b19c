"""True/false settings given as text on the `monai.bundle run` command line are refused, not read as true.

python-fire (MONAI's command-line reader) passes `--write_overlays false` as the string 'false', which Python
counts as true. Every run config of both bundles starts its `initialize` list with
`bundle_settings.check_switches` over all its top-level true/false settings; these tests keep those lists
complete and show a run stopping with one line that names the setting, before it writes anything.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from lungnod_ext.data.bundle_settings import check_switches

REPO = Path(__file__).resolve().parents[2]
SEG = REPO / "bundles" / "lung_nodule_ct_segmentation"
CLS = REPO / "bundles" / "lung_nodule_ct_classification"
RUNS = [(bundle, configs) for bundle in (SEG, CLS) for configs in (
    ["train"], ["train", "evaluate"], ["train", "multi_gpu_train"], ["train", "train_3d"], ["train", "train_images2d"],
    ["inference"], ["inference", "inference_3d"], ["inference", "inference_fast"])] + [(SEG, ["inference",
                                                                                        "inference_images2d"])]


def _merged(bundle: Path, configs: list[str]) -> dict:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f"{name}.json") for name in configs])
    return parser.get()


def _is_switch(value) -> bool:
    """A top-level true/false setting: a JSON bool, or an expression that gives one at run time (amp)."""
    return isinstance(value, bool) or value == "$torch.cuda.is_available()"


@pytest.mark.parametrize("bundle,configs", RUNS, ids=[f"{b.name.split('_')[-1]}-{'+'.join(c)}" for b, c in RUNS])
def test_every_top_level_switch_is_checked_first(bundle, configs):
    config = _merged(bundle, configs)
    switches = {key for key, value in config.items() if _is_switch(value)}
    first = config["initialize"][0]
    assert first.startswith("$bundle_settings.check_switches("), first
    call = ast.parse(first[1:].replace("@", "")).body[0].value
    checked = {kw.arg for kw in call.keywords}
    assert all(ast.unparse(kw.value) == kw.arg for kw in call.keywords), first   # amp=@amp, not amp=@other
    assert "amp" in switches
    assert checked == switches, (sorted(switches - checked), sorted(checked - switches))


def test_check_switches_accepts_bools_and_names_a_text_value():
    check_switches(amp=True, write_overlays=False, assume_hu=np.bool_(False))
    with pytest.raises(ValueError) as err:
        check_switches(amp=False, write_overlays="false")
    assert str(err.value) == ("bundle setting write_overlays must be True or False, got 'false'; write "
                              "--write_overlays False on the monai.bundle command line (lowercase is read as text), "
                              "write_overlays=false after lungnod's --seg / --cls")
    with pytest.raises(ValueError, match="got 'true'; write --assume_hu True on .* assume_hu=true after"):
        check_switches(assume_hu="true")
    with pytest.raises(ValueError, match="got 0; write --amp False on .* amp=false after"):
        check_switches(amp=0)
    with pytest.raises(ValueError, match=r"got None; write --pleural_caps True \(or False\) on"):
        check_switches(pleural_caps=None)


@pytest.mark.parametrize("bundle,configs,key", [(SEG, ["inference"], "assume_hu"), (SEG, ["train"], "amp"),
                                                (CLS, ["inference"], "amp"),
                                                (CLS, ["train", "evaluate"], "batch_augmentation")])
def test_a_text_switch_stops_the_workflow_at_initialize(bundle, configs, key, tmp_path):
    workflow = ConfigWorkflow(config_file=[str(bundle / "configs" / f"{c}.json") for c in configs],
                              meta_file=str(bundle / "configs" / "metadata.json"), workflow_type="infer"
                              if configs == ["inference"] else "train", output_dir=str(tmp_path / "out"),
                              **{key: "false"})
    with pytest.raises(RuntimeError) as err:          # MONAI's "Failed to evaluate ...", from ours
        workflow.initialize()
    assert isinstance(err.value.__cause__, ValueError)
    assert str(err.value.__cause__).startswith(f"bundle setting {key} must be True or False, got 'false'")
    assert not (tmp_path / "out").exists()


def test_monai_bundle_run_with_lowercase_false_stops_with_one_line(tmp_path):
    """The command line users type: nothing written, the reason in the output, non-zero exit."""
    volume = tmp_path / "ct.nii.gz"              # never read: the switch is refused first
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           "configs/inference.json", "--input", str(volume), "--output_dir", str(tmp_path / "out"),
                           "--write_overlays", "false"], cwd=SEG, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode != 0
    assert ("bundle setting write_overlays must be True or False, got 'false'; write --write_overlays False on the "
            "monai.bundle command line") in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
