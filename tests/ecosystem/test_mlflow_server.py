"""Bundle training tracked on a real MLflow tracking server, as a team would run it.

A ``mlflow server`` (the venv's MLflow) listens on loopback with an SQLite backend store and proxied
artifact storage (``--artifacts-destination``: clients upload through the server's ``mlflow-artifacts:/``
API, they never write the artifact folder themselves). Each bundle trains for 2-3 tiny epochs with
``--tracking mlflow --tracking_uri http://127.0.0.1:<port>``, and the run is read back over HTTP with
``MlflowClient``: params (``lungnod_ext.handlers.tracking.MLflowRunExtras``), the per-iteration ``train_loss`` (whose
per-epoch means must equal ``train_history.json``), one validation metric per epoch, the executed config,
the overlays (segmentation) and the checkpoint, identical to the file training wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_servers import free_port, wait_for_http  # noqa: E402  (a module beside this one)

REPO = Path(__file__).resolve().parents[2]
MLFLOW = Path(sys.executable).parent / "mlflow"
QUIET_MLFLOW = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONWARNINGS": "ignore"}
SEG_TINY = ["--network_def#backbone", "resnet18", "--spacing", "[4,4,4]", "--infer_roi_size", "[96,96]",
            "--patch_size", "[64,64]", "--samples_per_volume", "4", "--batch_size", "8", "--learning_rate", "0.001"]

# per bundle: tiny overrides, epochs, the validation key metric, params to expect, whether it logs overlays
BUNDLE_SPECS = {
    "lung_nodule_ct_segmentation": {"args": SEG_TINY, "epochs": 3, "val_metric": "val_mean_dice", "overlays": True,
                                    "params": {"learning_rate": "0.001", "loss": "MaskedDiceBCELoss",
                                               "network": "TraceableFlexibleUNet", "epochs": "3"}},
    "lung_nodule_ct_classification": {"args": ["--batch_size", "16", "--learning_rate", "0.001"], "epochs": 2,
                                      "val_metric": "val_auc", "overlays": False,
                                      "params": {"learning_rate": "0.001", "loss": "BCEWithLogitsLoss",
                                                 "network": "NoduleCNN", "epochs": "2"}},
}
BUNDLES = [name for name in BUNDLE_SPECS if (REPO / "bundles" / name / "configs" / "train.json").is_file()]


class MlflowServer:
    """``mlflow server`` in its own process group (uvicorn worker included), stopped as a group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.log_path = root / "server.log"
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **QUIET_MLFLOW)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.artifacts)],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_for_http(self.proc, f"{self.url}/health", lambda status, body: True if status == 200 and body.strip() == b"OK" else None,
                      "mlflow server", lambda: self.log_path.read_text()[-3000:], timeout, request_timeout=2, poll_s=0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # the uvicorn worker shares the group; make sure none outlives the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=BUNDLES)
def tracked(request, server, cohort, bundle_dataset, tmp_path_factory) -> dict:
    """One tiny training per bundle, tracked on the server; the run read back over HTTP."""
    from mlflow.tracking import MlflowClient

    bundle = request.param
    spec = BUNDLE_SPECS[bundle]
    data = bundle_dataset(bundle)
    server.wait_ready()
    work = tmp_path_factory.mktemp(f"tracked_{bundle}")
    experiment = f"lungnod_server_{bundle}"
    env = dict(os.environ, OMP_NUM_THREADS="1", **QUIET_MLFLOW)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
         "--dataset_dir", str(data), "--output_dir", str(work / "eval"), "--ckpt_dir", str(work / "models"),
         "--epochs", str(spec["epochs"]), "--val_interval", "1", "--num_workers", "0", *spec["args"],
         "--tracking", "mlflow", "--tracking_uri", server.url, "--experiment_name", experiment,
         "--run_name", "tiny"],
        cwd=REPO / "bundles" / bundle, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    client = MlflowClient(tracking_uri=server.url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return {"bundle": bundle, "spec": spec, "work": work, "client": client, "experiment": exp, "run": runs[0],
            "server": server, "data": data}


def test_run_finished_with_params(tracked):
    run = tracked["run"]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    params = run.data.params
    for key, value in tracked["spec"]["params"].items():
        assert params[key] == value, (key, params.get(key))
    assert params["dataset_dir"] == str(tracked["data"])


def test_per_iteration_loss_and_per_epoch_validation_metric(tracked):
    client, run_id = tracked["client"], tracked["run"].info.run_id
    epochs = tracked["spec"]["epochs"]
    history = json.loads((tracked["work"] / "eval" / "train_history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    losses = sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
    iterations = [row["iterations"] for row in history]
    assert [m.step for m in losses] == list(range(1, sum(iterations) + 1))
    ends = np.cumsum([0, *iterations])
    epoch_means = [np.mean([m.value for m in losses[a:b]]) for a, b in zip(ends[:-1], ends[1:])]
    np.testing.assert_allclose(epoch_means, [row["loss"] for row in history], rtol=1e-5)

    name = tracked["spec"]["val_metric"]
    val = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
    assert [m.step for m in val] == list(range(1, epochs + 1))
    local = json.loads((tracked["work"] / "eval" / "val_history.json").read_text())
    np.testing.assert_allclose([m.value for m in val], [row[name] for row in local], atol=1e-6)
    assert all(0.0 <= m.value <= 1.0 for m in val)


def test_artifacts_go_through_the_server(tracked):
    """Proxied storage: the experiment stores mlflow-artifacts:/ URIs, the files land in the server's folder,
    and training left no local tracking store behind."""
    assert tracked["experiment"].artifact_location.startswith("mlflow-artifacts:")
    run_id = tracked["run"].info.run_id
    stored = {p.name for p in (tracked["server"].artifacts).rglob("*") if run_id in str(p)}
    assert {"model.pt", "train_history.json"} <= stored, stored
    assert not (tracked["work"] / "eval" / "mlruns.db").exists()
    assert not (tracked["work"] / "eval" / "mlruns").exists()


def test_executed_config_artifact(tracked, tmp_path):
    client, run_id = tracked["client"], tracked["run"].info.run_id
    names = [a.path for a in client.list_artifacts(run_id)]
    configs = [n for n in names if n.startswith("config_") and n.endswith(".json")]
    assert len(configs) == 1, names
    config = json.loads(Path(client.download_artifacts(run_id, configs[0], str(tmp_path))).read_text())
    assert config["epochs"] == tracked["spec"]["epochs"] and config["val_interval"] == 1
    assert config["dataset_dir"] == str(tracked["data"])
    if tracked["bundle"] == "lung_nodule_ct_segmentation":
        assert config["network_def"]["backbone"] == "resnet18" and config["patch_size"] == [64, 64]


@pytest.mark.parametrize("tracked", [b for b in BUNDLES if BUNDLE_SPECS[b]["overlays"]], indirect=True)
def test_overlay_artifacts(tracked, tmp_path):
    import cv2

    client, run_id = tracked["client"], tracked["run"].info.run_id
    remote = sorted(Path(a.path).name for a in client.list_artifacts(run_id, "val_overlays"))
    local = sorted(p.name for p in (tracked["work"] / "eval" / "val_overlays").glob("*.png"))
    n_val = len(json.loads((tracked["data"] / "datalist.json").read_text())["validation"])
    assert remote == local and len(remote) == min(n_val, 4), (remote, local)
    png = client.download_artifacts(run_id, f"val_overlays/{remote[0]}", str(tmp_path))
    rgb = cv2.imread(png, cv2.IMREAD_COLOR)
    assert rgb is not None and rgb.ndim == 3 and min(rgb.shape[:2]) >= 64


def test_checkpoint_artifact_loads_into_the_network(tracked, tmp_path):
    from monai.bundle import ConfigParser

    client, run_id = tracked["client"], tracked["run"].info.run_id
    path = Path(client.download_artifacts(run_id, "model.pt", str(tmp_path)))
    local = tracked["work"] / "models" / "model.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model"}
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / tracked["bundle"] / "configs" / "train.json"))
    if tracked["bundle"] == "lung_nodule_ct_segmentation":
        parser["network_def#backbone"] = "resnet18"
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(ckpt["model"])  # strict: same keys and shapes, no DDP "module." prefix
