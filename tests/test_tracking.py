"""The tracking journal: a dead server costs no metric and no crash; sync sends it later."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from crashchat.tracking import PENDING_FILE, Tracker, resolve_tracking_uri, sync_pending
from crashchat.tracking.lineage import (
    command_name,
    dataset_digest,
    dataset_input,
    ray_job_id,
    source_tags,
)
from crashchat.tracking.tracker import flatten_params


def _dead_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket closes


def test_dead_server_keeps_everything_and_sync_sends_it(tmp_path: Path) -> None:
    tracker = Tracker(_dead_uri(), timeout_s=2, retry_interval_s=60)
    tracker.create_run("r1", "exp", "crash_recognition", tags={"mixture": "crash_recognition"})
    tracker.log("r1", params={"lora": {"r": 8}, "lr": 0.001})
    for step in range(1, 4):
        tracker.log("r1", {"train_loss": 1.0 / step}, step=step)
    manifest = {"counts": {"clips": 3, "samples": 9}, "created": "now", "config": {"fps": 2}}
    tracker.log_input("r1", dataset_input(tmp_path / "pre", manifest, "training", split="train"))
    started = time.perf_counter()
    assert tracker.flush(force=True) is False
    assert time.perf_counter() - started < 30  # fails fast instead of retrying for minutes
    assert tracker.last_error and len(tracker.ops) == 6 and tracker.run_id("r1") is None
    assert tracker.flush() is False and len(tracker.ops) == 6  # within the retry interval
    tracker.end_run("r1")
    pending = tracker.save_pending(tmp_path / PENDING_FILE)
    assert pending is not None and pending.is_file()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    synced = sync_pending(tmp_path, uri=uri)
    assert synced.ops == [] and not pending.exists()
    client = MlflowClient(uri)
    run = client.get_run(synced.run_ids["r1"])
    assert run.data.params["lora.r"] == "8" and run.data.tags["mixture"] == "crash_recognition"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    # The dataset input waited in the journal like the metrics did.
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "pre:train"
    assert given.dataset.digest == dataset_digest(manifest, "train") != dataset_digest(manifest)
    assert {(t.key, t.value) for t in given.tags} == {
        ("mlflow.data.context", "training"), ("split", "train")}  # fmt: skip


def test_lineage_values() -> None:
    import json as _json

    base = {"counts": {"clips": 3}, "config": {"fps": 2}, "model": "m"}
    # Rebuilding the same data elsewhere, later, gives the same digest; other data does not.
    assert dataset_digest({**base, "created": "a", "placement": "x"}) == dataset_digest(
        {**base, "created": "b", "video_root": "/other"}
    )
    assert dataset_digest(base) != dataset_digest({**base, "config": {"fps": 10}})
    assert command_name(["/venv/bin/crashchat", "train", "--config", "x"]) == "crashchat train"
    assert command_name(["jobs/finetune.py", "--config", "x"]) == "jobs/finetune.py"
    env = {
        "RAY_JOB_CONFIG_JSON_ENV_VAR": _json.dumps(
            {"metadata": {"job_submission_id": "raysubmit_1"}}
        )
    }
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env):
        assert ray_job_id() == "raysubmit_1"
        tags = source_tags("jobs/pipeline.py")
    assert tags["mlflow.source.type"] == "JOB" and tags["ray.job_id"] == "raysubmit_1"
    assert tags["mlflow.source.name"] == "jobs/pipeline.py" and tags["crashchat.version"]


def test_replayed_operations_do_not_duplicate_metrics(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    tracker.create_run("r", "exp", "run")
    tracker.log("r", {"train_loss": 2.0}, step=1)
    saved = tracker.pending()  # what a checkpoint holds before the flush
    assert tracker.flush(force=True)
    # A restarted worker resumes from that checkpoint and replays the same journal.
    again = Tracker(uri, ops=saved["ops"], run_ids=tracker.run_ids)
    assert again.flush(force=True)
    history = MlflowClient(uri).get_metric_history(tracker.run_ids["r"], "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0)]


def test_a_restart_from_an_older_checkpoint_logs_no_step_twice(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri)
    first.create_run("r", "exp", "run")
    first.log("r", {"train_loss": 2.0, "learning_rate": 0.1}, step=1)
    saved = first.pending()  # the checkpoint taken at step 1, before the flush
    first.log("r", {"train_loss": 1.5, "learning_rate": 0.1}, step=2)
    assert first.flush(force=True)  # step 2 reached the store, but its checkpoint was lost
    # The restart resumes at step 1, replays the journal and computes step 2 again: new values,
    # new timestamps, which MLflow alone would store as a second point.
    again = Tracker(uri, ops=saved["ops"], run_ids=first.run_ids, skip_logged_steps=True)
    again.log("r", {"train_loss": 1.4, "learning_rate": 0.1}, step=2)
    again.log("r", {"train_loss": 1.0, "learning_rate": 0.05}, step=3)
    assert again.flush(force=True)
    client = MlflowClient(uri)
    history = client.get_metric_history(first.run_ids["r"], "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    lr = client.get_metric_history(first.run_ids["r"], "learning_rate")
    assert [m.step for m in lr] == [1, 2, 3]


def test_uri_resolution_and_param_flattening(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    assert flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": "1",
        "a.c.d": "[1, 2]",
        "e": "None",
    }


def test_a_failed_send_is_retried_not_skipped(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri)
    first.create_run("r", "exp", "run")
    assert first.flush(force=True)
    again = Tracker(uri, run_ids=first.run_ids, skip_logged_steps=True, retry_interval_s=0)
    again.log("r", {"train_loss": 1.0}, step=1)
    real = again.client.log_batch
    calls = []

    def fail_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("store went away")
        return real(*args, **kwargs)

    again.client.log_batch = fail_once
    assert not again.flush(force=True)  # kept in the journal
    assert again.flush(force=True)  # and sent on the retry
    history = MlflowClient(uri).get_metric_history(first.run_ids["r"], "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0)]
