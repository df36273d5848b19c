"""Multi-process (DDP) training as the design card runs it, on CPU with the gloo backend:

    torchrun --nproc_per_node=2 -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']"

Evidence per rank comes from ``lungnod_ext.handlers.distributed.BatchCaseRecorder`` (``<output_dir>/rank<r>_cases.json``:
case ids and sample counts of every batch, parameter checksum after every epoch) and from torchrun's per-rank
logs (``--log-dir --redirects 3``). Checked: both ranks trained, on disjoint cases covering the training list
(segmentation, DistributedSampler); weights stayed in sync (equal checksums); rank 0 alone saved
``models/model.pt`` (a plain ``{"model": state_dict}`` without ``module.``), wrote the histories, logged the
training and made the one MLflow run.

torchrun is given ``--master_addr 127.0.0.1`` and a free ``--master_port`` so rendezvous never depends on the
host name resolving.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_servers import free_port  # noqa: E402  (a module beside this one)

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
WORLD = 2
EPOCHS = 2
SEG_TINY = ["--network_def#backbone", "resnet18", "--spacing", "[4,4,4]", "--infer_roi_size", "[96,96]",
            "--patch_size", "[64,64]", "--samples_per_volume", "4", "--batch_size", "8"]
BUNDLE_ARGS = {"lung_nodule_ct_segmentation": SEG_TINY, "lung_nodule_ct_classification": ["--batch_size", "8"]}
BUNDLES = [b for b in BUNDLE_ARGS if (REPO / "bundles" / b / "configs" / "multi_gpu_train.json").is_file()]
# for a bundle whose multi_gpu_train.json does not attach the recorder itself: the same handler selection
# (rank > 0 keeps only the collective ValidationHandler and the no-op-on-rank>0 ResumableTraining) + recorder
RECORDER_OVERRIDE = {
    "train#case_recorder": {"_target_": "lungnod_ext.handlers.distributed.BatchCaseRecorder", "output_dir": "@output_dir",
                            "network": "@network", "case_key": "case"},
    "train#trainer#train_handlers": "$([h for h in @train#handlers if isinstance(h, monai.handlers.ValidationHandler)"
                                    " or type(h).__name__ == 'ResumableTraining'] if dist.get_rank() > 0 else"
                                    " @train#handlers) + [@train#case_recorder]",
}


# ---------------------------------------------------------------- the recorder, in process


def test_batch_case_ids_from_collated_decollated_and_metadata():
    from monai.data import MetaTensor

    from lungnod_ext.handlers.distributed import batch_case_ids, batch_size_of

    collated = {"image": torch.zeros(4, 1, 8, 8), "case_id": ["a", "a", "b", "b"]}
    assert batch_case_ids(collated) == ["a", "b"] and batch_size_of(collated) == 4
    decollated = [{"image": torch.zeros(1, 8, 8), "case_id": c} for c in ("b", "a", "b")]
    assert batch_case_ids(decollated) == ["b", "a"] and batch_size_of(decollated) == 3
    image = MetaTensor(torch.zeros(2, 1, 8, 8), meta={"filename_or_obj": ["/d/images/x1.nii.gz", "/d/images/x2.nii"]})
    assert batch_case_ids({"image": image}) == ["x1", "x2"]


def test_recorder_writes_rank0_file_without_distributed(tmp_path):
    from ignite.engine import Engine

    from lungnod_ext.handlers.distributed import BatchCaseRecorder

    net = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(net.weight, 0.5)
    torch.nn.init.constant_(net.bias, 0.25)
    data = [{"image": torch.zeros(2, 2), "case_id": ["p", "q"]}, {"image": torch.zeros(1, 2), "case_id": ["r"]}]
    engine = Engine(lambda e, b: None)
    BatchCaseRecorder(tmp_path, network=net).attach(engine)
    engine.run(data, max_epochs=2)
    record = json.loads((tmp_path / "rank0_cases.json").read_text())
    assert record["rank"] == 0 and record["world_size"] == 1
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert record["epochs"][1]["batches"] == [["p", "q"], ["r"]] and record["epochs"][1]["samples"] == [2, 1]
    assert record["epochs"][0]["param_checksum"] == pytest.approx(1.25)


# ---------------------------------------------------------------- torchrun, 2 processes, gloo


def _rank_logs(log_dir: Path) -> dict[int, str]:
    """Per local rank, stdout + stderr as torchrun's --redirects wrote them (<log_dir>/<run>/attempt_0/<rank>/)."""
    logs: dict[int, str] = {}
    for rank_dir in log_dir.glob("*/attempt_*/*"):
        if rank_dir.is_dir() and rank_dir.name.isdigit():
            logs[int(rank_dir.name)] = "".join(p.read_text(errors="replace") for p in sorted(rank_dir.glob("*.log")))
    return logs


GLOO_ABORT = "terminate called without an active exception"


def _torchrun(cmd: list[str], cwd: Path, env: dict, work: Path) -> tuple[int, str, dict[int, str]]:
    """(torchrun's exit code, its stderr, the per-rank logs); fails the test on a timeout."""
    # own process group: on a timeout the workers (blocked in a collective, say) go down with torchrun
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun timed out; rank logs: {_rank_logs(work / 'torchrun')}")
    return proc.returncode, stderr, _rank_logs(work / "torchrun")


def _gloo_teardown_abort(logs: dict[int, str]) -> bool:
    """A rank finished its training run and then aborted with C++'s "terminate called without an active
    exception" (torchrun then stops the others, rank 0 typically still in its MLflow logging): the gloo
    teardown race seen in about one of ten loaded full-suite runs (never alone: 11 of 11 runs clean in session
    18, 5 of them beside CPU burners), with the barrier and ``destroy_process_group`` of ``multi_gpu_train.json``'s
    finalize in place. Anything else (a rank failing in training, a hang) is no match."""
    finished = "SupervisedTrainer - INFO - Engine run finished"
    return any(finished in text and GLOO_ABORT in text.split(finished)[-1] for text in logs.values())


@pytest.fixture(scope="module", params=BUNDLES)
def ddp(request, cohort, bundle_dataset, tmp_path_factory) -> dict:
    bundle = request.param
    bundle_dir = REPO / "bundles" / bundle
    data = bundle_dataset(bundle)
    work = tmp_path_factory.mktemp(f"ddp_{bundle}")
    configs = ["configs/train.json", "configs/multi_gpu_train.json"]
    if "BatchCaseRecorder" not in (bundle_dir / "configs" / "multi_gpu_train.json").read_text():
        (work / "record_cases.json").write_text(json.dumps(RECORDER_OVERRIDE, indent=1))
        configs.append(str(work / "record_cases.json"))
    cmd = [str(TORCHRUN), f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           f"--log-dir={work / 'torchrun'}", "--redirects=3",
           "-m", "monai.bundle", "run", "--config_file", repr(configs),
           "--dataset_dir", str(data), "--output_dir", str(work / "eval"), "--ckpt_dir", str(work / "models"),
           "--epochs", str(EPOCHS), "--val_interval", "1", "--num_workers", "0", *BUNDLE_ARGS[bundle],
           "--tracking", "mlflow"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true")
    returncode, stderr, logs = _torchrun(cmd, bundle_dir, env, work)
    if returncode and _gloo_teardown_abort(logs):
        # torch's gloo teardown race (below): rerun once from scratch, loudly, and hold the rerun to every check
        warnings.warn(f"{bundle}: a rank trained to the end, then aborted in gloo's teardown ('{GLOO_ABORT}'); "
                      "rerunning torchrun once")
        for path in ("torchrun", "eval", "models"):
            shutil.rmtree(work / path, ignore_errors=True)
        returncode, stderr, logs = _torchrun(cmd, bundle_dir, env, work)
    assert returncode == 0, (stderr[-3000:], {r: t[-3000:] for r, t in logs.items()})
    datalist = json.loads((data / "datalist.json").read_text())
    records = {r: json.loads((work / "eval" / f"rank{r}_cases.json").read_text()) for r in range(WORLD)}
    return {"bundle": bundle, "work": work, "logs": logs, "records": records, "datalist": datalist}


def test_every_rank_trained_every_epoch(ddp):
    for rank, record in ddp["records"].items():
        assert record["rank"] == rank and record["world_size"] == WORLD
        assert [e["epoch"] for e in record["epochs"]] == list(range(1, EPOCHS + 1))
        assert all(e["batches"] and sum(e["samples"]) > 0 for e in record["epochs"]), record
    per_rank = [[sum(e["samples"]) for e in ddp["records"][r]["epochs"]] for r in range(WORLD)]
    assert per_rank[0] == per_rank[1], per_rank  # even_divisible: same number of samples per rank


@pytest.mark.parametrize("ddp", ["lung_nodule_ct_segmentation"], indirect=True)
def test_ranks_trained_on_disjoint_cases_covering_the_training_list(ddp):
    """Segmentation only: the classifier's patches of one case are spread over both ranks (its sampler partitions
    patches, then draws with replacement), and no per-patch id survives its transforms to be recorded."""
    training = {e["case_id"] for e in ddp["datalist"]["training"]}
    assert len(training) % WORLD == 0, "no padding duplicates with an evenly divisible training list"
    for epoch in range(EPOCHS):
        seen = [{c for batch in ddp["records"][r]["epochs"][epoch]["batches"] for c in batch} for r in range(WORLD)]
        assert not seen[0] & seen[1], (epoch, seen)
        assert seen[0] | seen[1] == training, (epoch, seen, training)
        assert len(seen[0]) == len(seen[1]) == len(training) // WORLD


def test_training_cases_come_from_the_training_split(ddp):
    key = "case_id" if ddp["bundle"] == "lung_nodule_ct_segmentation" else "case"
    training = {e[key] for e in ddp["datalist"]["training"]}
    for record in ddp["records"].values():
        for epoch in record["epochs"]:
            assert {c for batch in epoch["batches"] for c in batch} <= training


def test_weights_stay_in_sync_across_ranks(ddp):
    sums = [[e["param_checksum"] for e in ddp["records"][r]["epochs"]] for r in range(WORLD)]
    assert sums[0] == pytest.approx(sums[1], rel=1e-9, abs=1e-9), sums
    assert sums[0][0] != sums[0][-1], "parameters must change during training"


def test_rank0_alone_saved_the_model_and_wrote_histories_and_logs(ddp):
    from monai.bundle import ConfigParser

    work, logs = ddp["work"], ddp["logs"]
    assert sorted(logs) == list(range(WORLD))
    assert sorted(p.name for p in (work / "models").iterdir()) == ["model.pt", "resume.pt"]
    outputs = {p.name for p in (work / "eval").iterdir()}
    assert {"train_history.json", "val_history.json", "rank0_cases.json", "rank1_cases.json"} <= outputs
    assert not [n for n in outputs if ".part" in n], outputs
    history = json.loads((work / "eval" / "train_history.json").read_text())
    assert [row["iterations"] for row in history] == [len(e["batches"]) for e in ddp["records"][0]["epochs"]]
    # the per-rank logs: rank 0 saved the best model and logged losses; rank 1 trained but wrote nothing of it
    assert "saved best model" in logs[0] and "train_loss" in logs[0]
    assert "saved best model" not in logs[1] and "train_loss" not in logs[1]
    assert "Metrics --" not in logs[1] and "MLflow run" not in logs[1]
    for rank in range(WORLD):
        assert "SupervisedTrainer - INFO - Engine run finished" in logs[rank], logs[rank][-2000:]

    ckpt = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model"} and not any(k.startswith("module.") for k in ckpt["model"])
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / ddp["bundle"] / "configs" / "train.json"))
    if ddp["bundle"] == "lung_nodule_ct_segmentation":
        parser["network_def#backbone"] = "resnet18"
    parser.get_parsed_content("network_def").load_state_dict(ckpt["model"])


def test_one_mlflow_run_made_by_rank0(ddp):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ddp['work'] / 'eval' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("monai_experiment")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == list(range(1, sum(len(e["batches"]) for e in ddp["records"][0]["epochs"]) + 1))
    assert "model.pt" in {a.path for a in client.list_artifacts(run_id)}
