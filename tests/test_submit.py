"""Job submission to a real local multi-node Ray cluster (head + CPU-decode + stand-in GPU node),
through the Jobs API, as a user runs it: ``crashchat cluster up``, ``crashchat submit``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from crashchat.local_cluster import free_port, head_processes, serve_replicas

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "crashchat.cli"]

pytestmark = pytest.mark.timeout(900)


class Cluster:
    def __init__(self, address: str, dashboard: str) -> None:
        self.address = address
        self.dashboard = dashboard


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    cfg = yaml.safe_load((REPO / "cluster/local/cluster.yaml").read_text())
    cfg["dashboard_port"] = free_port()
    (root / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    state = root / "state.json"
    up = subprocess.run(
        [*CLI, "cluster", "up", "--config", str(root / "cluster.yaml"), "--state-file", str(state)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert info["nodes"] == ["head", "cpu-decode", "gpu-standin"]
    assert info["dashboard"].startswith("http://127.0.0.1:")
    try:
        yield Cluster(info["address"], info["dashboard"])
    finally:
        down = subprocess.run(
            [*CLI, "cluster", "down", "--state-file", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr[-2000:]
        assert head_processes(info["address"]) == []


def _submit(cluster: Cluster, *args: str, job: str = "pipeline") -> tuple[int, dict[str, str], str]:
    done = subprocess.run(
        [*CLI, "submit", job, "--address", cluster.dashboard, *args],
        capture_output=True,
        text=True,
        timeout=800,
    )
    lines = [x for x in done.stdout.strip().splitlines() if x.startswith("{")]
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


def test_pipeline_job_succeeds_and_mlflow_holds_its_runs(
    cluster: Cluster, synth_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "mlflow.db"
    out = tmp_path / "run"
    port = free_port()
    code, result, logs = _submit(
        cluster,
        "--env",
        f"MLFLOW_TRACKING_URI=sqlite:///{db}",
        "--config",
        str(REPO / "jobs/configs/pipeline-tiny.yaml"),
        "--set",
        f"serve.port={port}",
        # The test checks the stages' wiring, not learning: two steps, one evaluated task.
        "--set",
        "train.schedule.max_steps=2",
        "--set",
        "evaluate.tasks=[crash_recognition]",
        "--annotations",
        str(synth_dir),
        "--video-root",
        str(synth_dir),
        "--model",
        str(tiny_model_dir),
        "--output",
        str(out),
    )
    assert code == 0 and result["status"] == "SUCCEEDED", logs[-4000:]
    assert '"stage": "compare"' in logs  # the job's own output streamed back
    stages = [json.loads(x[x.index('{"stage"') :]) for x in logs.splitlines() if '{"stage"' in x]
    assert [s["stage"] for s in stages] == [
        "preprocess",
        "train",
        "evaluate",
        "evaluate",
        "compare",
        "serve",
    ]
    assert all(s["seconds"] >= 0 for s in stages)
    print([(s["stage"], s["seconds"]) for s in stages])  # where the job's time went (pytest -rP)
    assert (out / "checkpoints" / "crash_recognition" / "manifest.json").is_file()
    assert (out / "comparison" / "comparison.md").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("crashchat-pipeline")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name or "" for r in runs)
    assert any(n.startswith("crash_recognition") for n in names), names
    assert "strategy-comparison" in names
    assert any(r.data.tags.get("strategy") == "baseline" for r in runs), names
    trained = next(r for r in runs if (r.info.run_name or "").startswith("crash_recognition"))
    assert any(k.startswith("crash_recognition.") for k in trained.data.metrics)  # evaluated
    version = client.get_model_version_by_alias("crashchat-pipeline", "crash_recognition")
    assert version.run_id == trained.info.run_id
    # Every run fills the MLflow UI's Dataset and Source columns (the same search API it uses).
    for run in runs:
        assert run.inputs.dataset_inputs, run.info.run_name
        assert run.data.tags["mlflow.source.name"] == "jobs/pipeline.py", run.data.tags
        assert run.data.tags["mlflow.source.type"] == "JOB" and run.data.tags["ray.job_id"]
        assert run.data.tags.get("mlflow.source.git.commit"), run.info.run_name
    assert version.tags["dataset_digest"] and version.tags["git_commit"]
    # The last stage left the checkpoint and the baseline serving on the cluster.
    url = f"http://127.0.0.1:{port}/"
    served = requests.get(url + "v1/checkpoints", timeout=60).json()
    assert {c["name"] for c in served["checkpoints"]} == {"crash_recognition", "baseline"}
    clip = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    with clip.open("rb") as f:
        resp = requests.post(
            url + "v1/analyze",
            files={"video": (clip.name, f, "video/mp4")},
            data={"tasks": "crash_recognition"},
            timeout=120,
        )
    assert resp.status_code == 200, resp.text
    answer = resp.json()["results"]["crash_recognition"]
    assert answer["checkpoint"] == "crash_recognition" and "answer" in answer
    # The serve job alone redeploys the same app (the pipeline's serve settings, the same
    # environment), routing `auto` by the comparison's picks: unchanged checkpoints keep their
    # warm replicas instead of loading their weights again.
    settings = yaml.safe_load((REPO / "jobs/configs/pipeline-tiny.yaml").read_text())["serve"]
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({**settings, "port": port}))
    before = serve_replicas("crashchat", cluster.address)
    assert set(before) == {"router", "decoder", "model_crash_recognition", "model_baseline"}
    code, result, logs = _submit(
        cluster,
        "--env",
        f"MLFLOW_TRACKING_URI=sqlite:///{db}",
        "--checkpoints",
        str(out / "checkpoints"),
        "--base-model",
        str(tiny_model_dir),
        "--best",
        str(out / "comparison" / "best_checkpoints.json"),
        "--config",
        str(tmp_path / "serve.yaml"),
        job="serve",
    )
    assert code == 0 and result["status"] == "SUCCEEDED", logs[-4000:]
    assert f'"url": "http://127.0.0.1:{port}/"' in logs
    served = requests.get(url + "v1/checkpoints", timeout=60).json()
    assert served["auto"]["crash_recognition"] == "crash_recognition"
    assert {c["name"] for c in served["checkpoints"]} == {"crash_recognition", "baseline"}
    kept = {
        d: pids for d, pids in serve_replicas("crashchat", cluster.address).items() if d != "router"
    }
    assert kept == {d: pids for d, pids in before.items() if d != "router"}


def test_bad_config_job_fails_with_the_validation_message(
    cluster: Cluster, synth_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    code, result, logs = _submit(
        cluster,
        "--config",
        str(REPO / "jobs/configs/pipeline-tiny.yaml"),
        "--set",
        "train.schedule.global_batch_size=3",
        "--annotations",
        str(synth_dir),
        "--video-root",
        str(synth_dir),
        "--model",
        str(tiny_model_dir),
        "--output",
        str(tmp_path / "run"),
    )
    assert code == 1 and result["status"] == "FAILED", logs[-3000:]
    assert "global_batch_size (3) must divide" in logs


def test_unknown_job_and_unreachable_cluster_are_clear_errors() -> None:
    done = subprocess.run(
        [*CLI, "submit", "nonsense", "--address", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown job 'nonsense'" in done.stderr
    done = subprocess.run(
        [*CLI, "submit", "pipeline", "--address", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "127.0.0.1:1" in done.stderr
