"""Fine-tuning on a real local Ray: Ray Train + DeepSpeed (CPU, gloo) + MLflow, end to end.

Covers the checkpoint and registry a run leaves, resuming after a training worker is killed,
and a tracking server that dies mid-run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient

from conftest import start_local_ray
from crashchat.config import EvalConfig, PreprocessConfig, TrainConfig, load_config
from crashchat.data.tasks import get_mixture
from crashchat.evaluation.runner import EvalInputs, run_evaluation
from crashchat.local_cluster import cluster_processes
from crashchat.models.checkpoint import load_checkpoint, verify_checkpoint
from crashchat.training.runner import ResourceError, TrainInputs, check_resources, run_training
from crashchat.video.pipeline import PreprocessInputs, run_preprocess
from mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[1]
MIXTURE = "linguistic_centric"


@pytest.fixture(scope="module")
def extensions_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty DeepSpeed JIT-op cache for this module's workers: what they compile lands here."""
    path = tmp_path_factory.mktemp("torch_extensions")
    before = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("TORCH_EXTENSIONS_DIR")
    else:
        os.environ["TORCH_EXTENSIONS_DIR"] = before


@pytest.fixture(scope="module")
def local_ray(extensions_dir: Path):  # type: ignore[no-untyped-def]
    start_local_ray(2)  # its workers inherit the environment, hence the empty cache above
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def train_data(local_ray, synth_dir: Path, tiny_model_dir: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("train_data")
    # 2 fps keeps sequences short: the tests exercise the machinery, not learning.
    inputs = PreprocessInputs([synth_dir], synth_dir, tiny_model_dir, out)
    run_preprocess(PreprocessConfig(fps=2), inputs, None)
    return out


def _inputs(data: Path, model: Path, out: Path) -> TrainInputs:
    return TrainInputs(data, str(model), out, [get_mixture(MIXTURE)])


def _cfg(tmp: Path, uri: str, **schedule: Any) -> TrainConfig:
    cfg = load_config(REPO / "jobs/configs/tiny-cpu.yaml", TrainConfig)
    cfg.tracking.uri = uri
    cfg.tracking.retry_interval_s = 1.0
    cfg.tracking.request_timeout_s = 2.0
    for key, value in schedule.items():
        setattr(cfg.schedule, key, value)
    return cfg


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _metric_steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def trained(train_data: Path, tiny_model_dir: Path, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = _cfg(tmp, uri, max_steps=6, eval_every=3, save_every=3)
    cfg.tracking.system_metrics_interval_s = 1.0
    cfg.schedule.num_checkpoints_to_keep = 1  # the best step's weights must survive anyway
    # The workers' scratch only: other crashchat folders may come and go on the machine.
    scratch = lambda: set(Path(tempfile.gettempdir()).glob("crashchat-best-*"))  # noqa: E731
    before = scratch()
    results, note = run_training(cfg, _inputs(train_data, tiny_model_dir, tmp / "out"))
    return results, note, uri, tmp / "out", scratch() - before


@pytest.mark.timeout(600)
def test_train_one_mixture_end_to_end(trained, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    results, note, uri, out, left = trained
    assert left == set(), f"the workers left their scratch behind: {left}"
    assert note is None
    (res,) = results
    assert res.error is None, res.error
    assert res.steps == 6 and [h["step"] for h in res.history] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in res.evals] == [3, 6]
    first, last = res.history[0]["train_loss"], res.history[-1]["train_loss"]
    assert last < first, f"loss did not fall: {first} -> {last}"

    ckpt = out / MIXTURE
    meta = verify_checkpoint(ckpt)
    assert meta["tasks"] == list(get_mixture(MIXTURE).tasks)
    assert meta["step"] == res.best_step and meta["mlflow_run_id"] == res.run_id
    loaded = load_checkpoint(ckpt)
    assert loaded.meta["checkpoint"]["mixture"] == MIXTURE

    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["strategy"] == "homogeneous" and params["lora.r"] == "8"
    assert params["schedule.global_batch_size"] == "4" and params["base_model"] == str(
        tiny_model_dir.resolve()
    )
    for key in ("train_loss", "learning_rate", "samples_per_s", "tokens_per_s"):
        assert [s for s, _ in _metric_steps(client, res.run_id, key)] == [1, 2, 3, 4, 5, 6], key
    assert [s for s, _ in _metric_steps(client, res.run_id, "eval_loss")] == [3, 6]
    version = client.get_model_version_by_alias("crashchat-tiny", MIXTURE)
    assert version.run_id == res.run_id
    assert "checkpoint" in {a.path for a in client.list_artifacts(res.run_id)}
    # Ray Train kept only the newest checkpoint; the platform checkpoint is still the best step's.
    assert len(list((out / "_ray").rglob("checkpoint_*/state.json"))) == 1


def test_cpu_training_compiles_no_deepspeed_op(trained, extensions_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # DeepSpeed's CPU backend would JIT-compile its inference shm op (~45 s per machine).
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(extensions_dir)
    assert list(extensions_dir.iterdir()) == []


def test_training_runs_record_their_data_code_and_machine(trained, train_data: Path) -> None:  # type: ignore[no-untyped-def]
    from crashchat.tracking.lineage import dataset_digest
    from crashchat.video.samples import load_manifest

    results, _, uri, _, _ = trained
    (res,) = results
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(res.run_id)
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    manifest = load_manifest(train_data)
    assert {"training", "validation"} <= set(inputs)
    assert inputs["training"].digest == dataset_digest(manifest, "train")
    assert inputs["validation"].digest == dataset_digest(manifest, "val")
    assert inputs["training"].name == f"{train_data.name}:train"
    assert json.loads(inputs["training"].source)["uri"] == train_data.resolve().as_uri()
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["crashchat.version"] and len(tags["mlflow.source.git.commit"]) == 40
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), run.data.metrics
    version = client.get_model_version_by_alias("crashchat-tiny", MIXTURE)
    assert version.tags["dataset_digest"] == dataset_digest(manifest)
    assert version.tags["git_commit"].startswith(tags["mlflow.source.git.commit"])


@pytest.mark.timeout(600)
def test_evaluate_checkpoint_registry_alias_and_baseline(  # type: ignore[no-untyped-def]
    trained, train_data: Path, tiny_model_dir: Path, synth_dir: Path, tmp_path: Path
) -> None:
    results, _, uri, _, _ = trained
    (res,) = results
    cfg = EvalConfig(split="test", max_new_tokens=8, max_new_tokens_text=8)
    cfg.tracking.uri = uri
    # Through the registry alias, as serving finds checkpoints.
    ev = run_evaluation(
        cfg, EvalInputs(f"models:/crashchat-tiny@{MIXTURE}", tmp_path / "ev", data=train_data)
    )
    tasks = set(get_mixture(MIXTURE).tasks)
    assert set(ev.metrics) == tasks
    for task in tasks:
        records = json.loads((tmp_path / "ev" / "predictions" / f"{task}.json").read_text())
        assert len(records) == ev.counts[task] > 0
        assert all({"data_id", "video_path", "prompt", "raw_response"} <= set(r) for r in records)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(ev.metrics))
    assert set(saved["crash_recognition"]) >= {"N", "Accuracy", "Precision", "Recall", "F1"}
    # Metrics land in the checkpoint's own training run.
    assert ev.run_id == res.run_id
    client = MlflowClient(uri, registry_uri=uri)
    logged = client.get_run(res.run_id).data.metrics
    assert logged["crash_recognition.Accuracy"] == saved["crash_recognition"]["Accuracy"]
    # The untuned base gets its own baseline run; from annotations, clips are preprocessed first.
    cfg.preprocess = PreprocessConfig(fps=2)
    cfg.tasks = ["crash_recognition"]
    base = run_evaluation(
        cfg, EvalInputs(str(tiny_model_dir), tmp_path / "base", [synth_dir], synth_dir)
    )
    assert (tmp_path / "base" / "inputs" / "manifest.json").is_file() and base.failures == []
    assert base.counts == {"crash_recognition": ev.counts["crash_recognition"]}
    run = client.get_run(base.run_id)
    assert base.run_id != res.run_id and run.data.tags["strategy"] == "baseline"
    assert "crash_recognition.Accuracy" in run.data.metrics
    # Each evaluation records what it read (Dataset column) and what ran it (Source column).
    (evaluated,) = run.inputs.dataset_inputs
    assert {(t.key, t.value) for t in evaluated.tags} >= {("mlflow.data.context", "evaluation")}
    assert run.data.tags["mlflow.source.name"] and run.data.tags["parse"] == "upstream"
    contexts = {
        t.value
        for d in client.get_run(res.run_id).inputs.dataset_inputs
        for t in d.tags
        if t.key == "mlflow.data.context"
    }
    assert contexts == {"training", "validation", "evaluation"}
    # A second evaluation from the same annotations reuses the preprocessed inputs as they are.
    shared = tmp_path / "base" / "inputs"
    stamp = (shared / "manifest.json").stat().st_mtime_ns
    again = run_evaluation(
        cfg.model_copy(update={"inputs": str(shared)}),
        EvalInputs(str(tiny_model_dir), tmp_path / "again", [synth_dir], synth_dir),
    )
    assert (shared / "manifest.json").stat().st_mtime_ns == stamp
    assert again.metrics["crash_recognition"]["N"] == base.metrics["crash_recognition"]["N"]


def _registered_checkpoints(storage: Path) -> int:
    """Checkpoints Ray Train's controller has registered (only those can be resumed from)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):
            return 0  # being written
    return 0


def _train_workers() -> list[psutil.Process]:
    """This module's Ray Train workers: the test SIGKILLs one, never another Ray's (a user's
    training run on the same machine)."""
    found = []
    for pid, cmd in cluster_processes(ray.get_runtime_context().gcs_address).items():
        if "RayTrainWorker" in cmd:
            with contextlib.suppress(psutil.NoSuchProcess):
                found.append(psutil.Process(pid))
    return found


# One run, two faults (each a real process death): the tracking server goes down mid-run, then a
# training worker is killed. Training resumes from the newest checkpoint, and once the server is
# back one sync leaves MLflow holding every step exactly once, as the run computed it.
@pytest.mark.timeout(900)
def test_dead_tracking_server_and_killed_worker_lose_nothing(
    train_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = MlflowServer(tmp_path / "mlflow")
    (tmp_path / "mlflow").mkdir()
    server.start()
    try:
        # Enough steps after the kill point that the kill lands mid-run even on a fast machine.
        cfg = _cfg(tmp_path, server.uri, max_steps=16, eval_every=8, save_every=2)
        out = tmp_path / "out"
        # Workers of earlier runs may still be exiting: only this run's workers are candidates.
        earlier = {p.pid for p in _train_workers()}
        thread, box = _in_thread(
            lambda: run_training(cfg, _inputs(train_data, tiny_model_dir, out))
        )
        client = MlflowClient(server.uri, registry_uri=server.uri)

        def some_metrics_logged() -> bool:
            exp = client.get_experiment_by_name(cfg.tracking.experiment)
            if exp is None:
                return False
            runs = client.search_runs([exp.experiment_id])
            return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, "train_loss"))

        _wait(lambda: some_metrics_logged() or not thread.is_alive(), 600, "first metrics")
        server.stop()  # the tracking server goes down mid-run
        storage = out / "_ray"
        _wait(lambda: _registered_checkpoints(storage) >= 2 or not thread.is_alive(), 600,
              "two registered checkpoints")  # fmt: skip
        assert thread.is_alive(), f"training ended before the kill: {box}"
        victims = [p for p in _train_workers() if p.pid not in earlier and p.is_running()]
        assert victims, "no training worker process found"
        victims[0].kill()  # SIGKILL: a real process death, no clean-up in the worker
        # What a worker killed mid-save leaves: its checkpoint folder (the kill above may not
        # land in a save, so one is made by a process that exits without cleaning up).
        left = subprocess.run(
            [sys.executable, "-c", "import os; from crashchat.scratch import make_scratch; "
             "d = make_scratch('ckpt'); print(d.name, flush=True); os._exit(0)"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        assert Path(left).is_dir()
        thread.join(timeout=800)
        assert not thread.is_alive(), "training did not finish after the restart"
        assert "error" not in box, box.get("error")
        results, note = box["value"]
        (res,) = results
        assert res.error is None, res.error  # training crashed on neither fault
        assert res.attempts == 2, "the worker group was not restarted"
        steps = [int(h["step"]) for h in res.history]
        assert steps == list(range(1, 17)), steps  # continuous: nothing repeated, nothing lost
        assert note and "unreachable" in note and "tracking sync" in note
        pending = out / "tracking_pending.json"
        assert pending.is_file()
        verify_checkpoint(out / MIXTURE)
        assert not Path(left).exists()  # removed by the restarted worker's next save

        server.start()  # back up, same store
        done = subprocess.run(
            [sys.executable, "-m", "crashchat.cli", "tracking", "sync", str(pending)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert not pending.exists()
        client = MlflowClient(server.uri, registry_uri=server.uri)
        run = client.get_run(res.run_id)
        assert run.info.status == "FINISHED"
        logged = _metric_steps(client, res.run_id, "train_loss")
        assert [s for s, _ in logged] == steps  # MLflow holds each step exactly once
        assert [round(v, 6) for _, v in logged] == [round(h["train_loss"], 6) for h in res.history]
        assert [s for s, _ in _metric_steps(client, res.run_id, "eval_loss")] == [8, 16]
        assert client.get_model_version_by_alias("crashchat-tiny", MIXTURE).run_id == res.run_id
    finally:
        server.stop()


def _torchrun(spec_path: Path, data: Path, storage: Path, *resume: str) -> list[dict[str, Any]]:
    """One worker process under torchrun (no Ray); its step history."""
    storage.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "crashchat.training.torchrun", "--spec", str(spec_path), "--data", str(data),
           "--storage", str(storage), *resume]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads((storage / "result.json").read_text())["history"])


@pytest.mark.timeout(900)
def test_resumed_run_recomputes_the_uninterrupted_steps_exactly(
    train_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A restart recomputes the steps after its checkpoint; the dying attempt may already have
    # logged them. Same rows and same dropout masks make the two computations one.
    from dataclasses import asdict

    from crashchat.tracking import Tracker
    from crashchat.training.runner import build_run_spec
    from crashchat.video.samples import load_manifest

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(tmp_path, uri, max_steps=6, eval_every=6, save_every=3, global_batch_size=2)
    cfg.scaling.num_workers = 1
    cfg.lora.dropout = 0.5  # masks drawn from the wrong generator state show in the 4th digit
    tracker = Tracker(uri)
    tracker.create_run("resume", cfg.tracking.experiment, "resume")
    tracker.flush(force=True)
    spec = build_run_spec(
        cfg, load_manifest(train_data), get_mixture(MIXTURE), str(tiny_model_dir), "resume",
        tracker.pending(), str(train_data),
    )  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    whole = _torchrun(spec_path, train_data, tmp_path / "whole")
    step3 = tmp_path / "whole" / "checkpoint_00001"
    assert json.loads((step3 / "state.json").read_text())["step"] == 3
    assert (step3 / "rng_state_0.pth").is_file()
    resumed = _torchrun(spec_path, train_data, tmp_path / "resumed", "--resume", str(step3))
    assert [h["step"] for h in whole] == [h["step"] for h in resumed] == [1, 2, 3, 4, 5, 6]
    assert [h["learning_rate"] for h in resumed] == [h["learning_rate"] for h in whole]
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in whole]


def test_cluster_too_small_fails_fast_naming_the_shortfall(local_ray) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(REPO / "jobs/configs/tiny-cpu.yaml", TrainConfig)
    check_resources(cfg)  # 2 x 0.5 + 0.5 fits in 2 CPUs
    cfg.scaling.num_workers = 4
    cfg.schedule.global_batch_size = 4
    with pytest.raises(ResourceError, match=r"4 workers x 0.5 CPU \+ 0.5 CPU for the data stage"):
        check_resources(cfg)
    cfg.scaling.num_workers = 2
    cfg.scaling.use_gpu = True
    with pytest.raises(ResourceError, match="2 GPUs requested"):
        check_resources(cfg)


@pytest.mark.timeout(300)
def test_train_cli_rejects_bad_config_and_unknown_mixture(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crashchat.cli import app

    args = ["train", "--data", str(tmp_path), "--model", "m", "--output", str(tmp_path / "o")]
    # One real process (exit status and stderr as a shell sees them), the rest in-process.
    bad = subprocess.run([sys.executable, "-m", "crashchat.cli", *args, "--set",
                          "schedule.global_batch_size=3"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "global_batch_size" in bad.stderr
    unknown = CliRunner().invoke(app, [*args, "--mixture", "nope"])
    assert unknown.exit_code == 2 and "unknown mixture 'nope'" in unknown.stderr
    nodata = CliRunner().invoke(app, [*args, "--mixture", "crash_recognition"])
    assert nodata.exit_code == 2 and "no manifest.json" in nodata.stderr
