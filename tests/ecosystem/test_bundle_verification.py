"""The checks the MONAI model zoo's CI runs on every bundle, run as a user runs them (``python -m monai.bundle``
from the bundle folder), on every bundle of the repo:

- ``verify_metadata`` against the project's schema file (``lungnod_ext/schemas/bundle_metadata_schema.json``):
  MONAI's ``download_url`` skips the download when ``--filepath`` exists (and checks ``--hash_val`` if given),
  so nothing is downloaded; the subprocesses run with an unusable HTTP(S) proxy to prove it.
- ``verify_net_in_out --net_id network_def``: a fake input of ``inputs.image.spatial_shape`` through the
  network, output channels and dtype against ``outputs.pred``.
- ``ckpt_export`` (traced) of a random-init ``{"model": state_dict}`` checkpoint and of the shipped
  ``models/model.pt`` to TorchScript, whose output must equal the checkpoint-loaded network's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SEG = REPO / "bundles" / "lung_nodule_ct_segmentation"
SCHEMA = REPO / "lungnod_ext" / "schemas" / "bundle_metadata_schema.json"
BUNDLES = sorted(p.parents[1] for p in (REPO / "bundles").glob("*/configs/metadata.json")
                 if (p.parent / "inference.json").is_file())
BUNDLE_IDS = [b.name for b in BUNDLES]
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
TOP_LEVEL_REQUIRED = ["version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                      "required_packages_version", "task", "description", "authors", "copyright",
                      "network_data_format"]
TENSOR_REQUIRED = ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
                   "channel_def"]


def monai_bundle(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` in ``cwd`` with every download made impossible."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **NO_NETWORK)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def load_metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def network_from_inference(bundle: Path, configs=("configs/inference.json",)) -> torch.nn.Module:
    """``network_def`` of ``configs`` (inference.json and overlays; with the metadata), built as MONAI's
    scripts build it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / c) for c in configs])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    return parser.get_parsed_content("network_def", instantiate=True)


def export_args(meta: dict) -> list[str]:
    """TorchScript by tracing at the metadata's input shape: MONAI's ResNet-18/34 blocks (the shipped U-Net's
    encoder) hold a ``functools.partial`` that ``torch.jit.script`` cannot compile; tracing is the zoo's
    documented alternative (``--use_trace True --input_shape``)."""
    image = meta["network_data_format"]["inputs"]["image"]
    return ["--use_trace", "True", "--input_shape", json.dumps([1, image["num_channels"], *image["spatial_shape"]])]


def sample_input(meta: dict, seed: int = 0) -> torch.Tensor:
    """A (1, C, *spatial_shape) float input in the metadata's value range."""
    image = meta["network_data_format"]["inputs"]["image"]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, image["num_channels"], *image["spatial_shape"], generator=g)


def test_bundles_found():
    assert SEG in BUNDLES, BUNDLE_IDS


# ---------------------------------------------------------------- verify_metadata


def test_schema_is_a_valid_draft07_schema():
    from jsonschema import Draft7Validator

    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(schema)
    assert schema["required"] == TOP_LEVEL_REQUIRED
    assert schema["definitions"]["tensor"]["required"] == TENSOR_REQUIRED


@pytest.mark.parametrize("bundle", BUNDLES, ids=BUNDLE_IDS)
def test_verify_metadata_cli_passes_with_local_schema_and_no_network(bundle):
    meta = load_metadata(bundle)
    assert meta["version"] in meta["changelog"], "the zoo requires a changelog entry for the current version"
    assert meta["schema"].startswith("https://"), "MONAI reads the schema URL even when the file is local"
    sha256 = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    proc = monai_bundle(["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA),
                         "--hash_val", sha256, "--hash_type", "sha256"], cwd=bundle)
    log = proc.stdout + proc.stderr
    assert "skipped downloading" in log and "metadata is verified with no error" in log, log[-2000:]


def test_verify_metadata_cli_fails_on_missing_required_field(tmp_path):
    meta = load_metadata(SEG)
    del meta["required_packages_version"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    proc = monai_bundle(["verify_metadata", "--meta_file", str(tmp_path / "metadata.json"), "--filepath",
                         str(SCHEMA)], cwd=SEG, check=False)
    assert proc.returncode != 0
    assert "'required_packages_version' is a required property" in proc.stderr, proc.stderr[-2000:]


def test_verify_metadata_cli_checks_the_local_file_hash_instead_of_downloading(tmp_path):
    """A wrong --hash_val fails on the existing file: MONAI uses the local schema, never the URL."""
    proc = monai_bundle(["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA),
                         "--hash_val", "0" * 64, "--hash_type", "sha256"], cwd=SEG, check=False)
    assert proc.returncode != 0
    assert "hash check of existing file failed" in proc.stderr, proc.stderr[-2000:]


def _drop(meta: dict, path: tuple[str, ...]) -> dict:
    broken = copy.deepcopy(meta)
    node = broken
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return broken


@pytest.mark.parametrize("path", [(k,) for k in TOP_LEVEL_REQUIRED]
                         + [("network_data_format", "inputs"), ("network_data_format", "outputs")]
                         + [("network_data_format", "inputs", "image", k) for k in TENSOR_REQUIRED]
                         + [("network_data_format", "outputs", "pred", k) for k in TENSOR_REQUIRED],
                         ids=lambda p: "#".join(p))
def test_metadata_missing_any_required_field_fails(path, tmp_path):
    """The same check MONAI's verify_metadata makes (jsonschema.validate with the schema), field by field."""
    from monai.bundle import verify_metadata

    meta = load_metadata(SEG)
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(_drop(meta, path)))
    with pytest.raises(ValueError, match=f"'{path[-1]}' is a required property"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA))


@pytest.mark.parametrize("field,value", [("version", "1.0"), ("changelog", {}), ("authors", ""),
                                         ("network_data_format#inputs#image#value_range", [0]),
                                         ("network_data_format#inputs#image#dtype", "float"),
                                         ("network_data_format#inputs#image#num_channels", 0),
                                         ("network_data_format#inputs#image#is_patch_data", "true"),
                                         ("network_data_format#outputs#pred#channel_def", {"bg": "background"})])
def test_metadata_with_malformed_values_fails(field, value):
    from jsonschema import Draft7Validator

    meta = load_metadata(SEG)
    node = meta
    *parents, last = field.split("#")
    for key in parents:
        node = node[key]
    node[last] = value
    errors = list(Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(meta))
    assert errors and any(list(e.absolute_path)[-1:] == [last] or last in e.message for e in errors), errors


@pytest.mark.parametrize("bundle", BUNDLES, ids=BUNDLE_IDS)
def test_channel_def_names_what_monai_label_shows(bundle):
    """MONAI Label reads ``outputs.pred.channel_def`` as {index: name}: a segmentation's label values (its
    "background" dropped), a classification's output channels (ClassificationWriter names the score of
    channel i after channel_def[i]). So a classifier's channel_def lists exactly its output channels."""
    pred = load_metadata(bundle)["network_data_format"]["outputs"]["pred"]
    names = {int(k): v for k, v in pred["channel_def"].items()}
    if pred["format"] == "segmentation":
        assert names == {0: "background", 1: "nodule"}, names
    else:
        assert sorted(names) == list(range(pred["num_channels"])), names
        assert "nodule" in names.values(), names


# ---------------------------------------------------------------- verify_net_in_out


@pytest.mark.parametrize("bundle", BUNDLES, ids=BUNDLE_IDS)
def test_verify_net_in_out_cli(bundle):
    proc = monai_bundle(["verify_net_in_out", "--net_id", "network_def", "--meta_file", "configs/metadata.json",
                         "--config_file", "configs/inference.json", "--device", "cpu"], cwd=bundle)
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_verify_net_in_out_rejects_wrong_output_channels():
    """verify_net_in_out really compares: metadata claiming 2 output channels fails (same function as the CLI)."""
    from monai.bundle import verify_net_in_out

    bundle = SEG
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="output channel number `1` doesn't match: `2`"):
        verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                          config_file=str(bundle / "configs" / "inference.json"), device="cpu",
                          **{"_meta_#network_data_format#outputs#pred#num_channels": 2})


# ---------------------------------------------------------------- ckpt_export (TorchScript)


@pytest.mark.parametrize("bundle", BUNDLES, ids=BUNDLE_IDS)
def test_ckpt_export_torchscript_matches_checkpoint(bundle, tmp_path):
    torch.set_num_threads(1)
    meta = load_metadata(bundle)
    torch.manual_seed(1)
    net = network_from_inference(bundle).eval()
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    ts_path = tmp_path / "model.ts"
    try:
        torch.save({"model": net.state_dict()}, ckpt)
        monai_bundle(["ckpt_export", "network_def", "--filepath", str(ts_path), "--ckpt_file", str(ckpt),
                      "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
                      "--key_in_ckpt", "model", *export_args(meta)], cwd=bundle)
        _check_export(bundle, meta, ckpt, ts_path)
    finally:  # ~130 MB each for the ResNet-50 U-Net: do not leave them in pytest's kept temp folders
        ckpt.unlink(missing_ok=True)
        ts_path.unlink(missing_ok=True)


SHIPPED = [(b, w, c) for b in BUNDLES for w, c in [
    ("model.pt", ("configs/inference.json",)),
    ("model_fast.pt", ("configs/inference.json", "configs/inference_fast.json"))]]


@pytest.mark.parametrize("bundle,weights,configs", SHIPPED, ids=[f"{b.name}-{w}" for b, w, _ in SHIPPED])
def test_ckpt_export_of_the_shipped_model(bundle, weights, configs, tmp_path):
    """The shipped ``models/model.pt`` and ``model_fast.pt`` (fp16 storage) export to TorchScript with MONAI's
    own command (the fast one with its overlay), no flags beyond the zoo's, and the export computes what the
    checkpoint-loaded network computes."""
    torch.set_num_threads(1)
    meta = load_metadata(bundle)
    ts_path = tmp_path / "model.ts"
    try:
        monai_bundle(["ckpt_export", "network_def", "--filepath", str(ts_path), "--ckpt_file", f"models/{weights}",
                      "--meta_file", "configs/metadata.json", "--config_file", json.dumps(list(configs)),
                      "--key_in_ckpt", "model", *export_args(meta)], cwd=bundle)
        _check_export(bundle, meta, bundle / "models" / weights, ts_path, configs)
    finally:
        ts_path.unlink(missing_ok=True)


@pytest.mark.parametrize("bundle", BUNDLES, ids=BUNDLE_IDS)
def test_verify_net_in_out_cli_with_the_fast_overlay(bundle):
    proc = monai_bundle(["verify_net_in_out", "--net_id", "network_def", "--meta_file", "configs/metadata.json",
                         "--config_file", json.dumps(["configs/inference.json", "configs/inference_fast.json"]),
                         "--device", "cpu"], cwd=bundle)
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def _check_export(bundle: Path, meta: dict, ckpt: Path, ts_path: Path,
                  configs=("configs/inference.json",)) -> None:
    from monai.data import load_net_with_metadata

    scripted, ts_meta, extras = load_net_with_metadata(str(ts_path), more_extra_files=("inference.json",))
    assert ts_meta["version"] == meta["version"]
    assert json.loads(extras["inference.json"])["network_def"] == json.loads(
        (bundle / "configs" / "inference.json").read_text())["network_def"]

    loaded = network_from_inference(bundle, configs).eval()
    loaded.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    x = sample_input(meta)
    scripted.eval()
    with torch.no_grad():
        expected, got = loaded(x), scripted(x)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert got.shape == expected.shape and got.shape[1] == pred["num_channels"]
    if pred["type"] == "image":  # verify_net_in_out checks channels and dtype only, not the spatial shape
        assert list(got.shape[2:]) == pred["spatial_shape"], (got.shape, pred["spatial_shape"])
    # traced vs eager kernels differ in the last digits of large logits: compare what users get, the sigmoid
    torch.testing.assert_close(torch.sigmoid(got), torch.sigmoid(expected), atol=1e-3, rtol=0)
    # the export carries the checkpoint's weights, not a fresh init (an output comparison cannot tell them apart
    # for an ensemble of freshly initialised classifiers: their mean logit hardly moves with the seed)
    weights, exported = loaded.state_dict(), scripted.state_dict()      # loaded: the checkpoint in the config's network
    assert set(weights) == set(exported)
    assert all(torch.equal(exported[k], v) for k, v in weights.items())
