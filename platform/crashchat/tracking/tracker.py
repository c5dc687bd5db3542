"""A journal of MLflow operations that is replayed until the tracking store accepts it.

Training must not crash or lose metrics because a tracking server is down. Every operation
(create run, log a batch of metrics/params/tags, log artifacts, register a model version, end the
run) is appended to a journal and applied in order; when the store is unreachable the journal
keeps it and the next :meth:`Tracker.flush` retries. What is still unsent at the end is written to
``tracking_pending.json`` beside the checkpoint, and ``crashchat tracking sync DIR`` sends it later.
Runs are referred to by a local key until MLflow has given them an id, so even the run's creation
can wait for the server.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

PENDING_FILE = "tracking_pending.json"
_MAX_PARAM_LEN = 6000


def default_tracking_uri(root: str | Path = "runs") -> str:
    """The embedded default: a sqlite store in the project's run folder."""
    path = Path(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None, root: str | Path = "runs") -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def _quiet_http(timeout_s: float) -> None:
    # MLflow retries a dead server for minutes by default; one quick attempt, then the journal.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` as MLflow params."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)[:_MAX_PARAM_LEN]
    return out


class Tracker:
    """Journaled MLflow client for one tracking URI.

    Args:
        uri: Tracking URI.
        timeout_s: HTTP timeout per request.
        retry_interval_s: After a failure, wait this long before trying the store again.
        ops: Journal to continue (from :meth:`pending` of an earlier tracker).
        run_ids: Local run key -> MLflow run id, for runs already created.
        skip_logged_steps: Before sending a metric, ask the store which steps of it the run
            already holds and drop those. A restarted worker replays the journal saved in its
            checkpoint, and part of it may have reached the store after that checkpoint was taken;
            with this set, the replay (and the steps it computes again) never logs a step twice.
    """

    def __init__(
        self,
        uri: str,
        timeout_s: float = 5.0,
        retry_interval_s: float = 10.0,
        ops: list[dict[str, Any]] | None = None,
        run_ids: dict[str, str] | None = None,
        skip_logged_steps: bool = False,
    ) -> None:
        _quiet_http(timeout_s)
        self.skip_logged_steps = skip_logged_steps
        self._logged_steps: dict[tuple[str, str], set[int]] = {}
        self.uri = uri
        self.retry_interval_s = retry_interval_s
        self.ops: list[dict[str, Any]] = list(ops or [])
        self.run_ids: dict[str, str] = dict(run_ids or {})
        self.last_error: str | None = None
        self.failures = 0
        self._next_try = 0.0
        self._client: Any = None

    # -- journal -------------------------------------------------------------------------------
    def create_run(
        self, key: str, experiment: str, run_name: str, tags: dict[str, str] | None = None
    ) -> None:
        """Create (or, on replay, reuse) the run known locally as ``key``."""
        if key not in self.run_ids:
            self.ops.append(
                {
                    "op": "create_run",
                    "key": key,
                    "experiment": experiment,
                    "run_name": run_name,
                    "tags": tags or {},
                }
            )

    def log(
        self,
        key: str,
        metrics: dict[str, float] | None = None,
        step: int | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Queue metrics (at ``step``), params and tags for run ``key``."""
        ts = int(time.time() * 1000)
        self.ops.append(
            {
                "op": "log",
                "key": key,
                "metrics": [[k, float(v), ts, int(step or 0)] for k, v in (metrics or {}).items()],
                "params": flatten_params(params or {}),
                "tags": {k: str(v) for k, v in (tags or {}).items()},
            }
        )

    def log_artifacts(self, key: str, local_dir: str | Path, artifact_path: str) -> None:
        """Queue a folder upload to the run's artifacts."""
        self.ops.append(
            {
                "op": "artifacts",
                "key": key,
                "local_dir": str(local_dir),
                "artifact_path": artifact_path,
            }
        )

    def register(
        self,
        key: str,
        model_name: str,
        alias: str,
        artifact_path: str,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Queue registering the run's ``artifact_path`` as a version of ``model_name`` (with
        ``tags`` on the version)."""
        self.ops.append(
            {
                "op": "register",
                "key": key,
                "model_name": model_name,
                "alias": alias,
                "artifact_path": artifact_path,
                "tags": {k: str(v) for k, v in (tags or {}).items()},
            }
        )

    def log_input(self, key: str, dataset: dict[str, Any]) -> None:
        """Queue a dataset input of run ``key`` (from :func:`crashchat.tracking.lineage.dataset_input`)."""
        self.ops.append({"op": "input", "key": key, **dataset})

    def end_run(self, key: str, status: str = "FINISHED") -> None:
        """Queue closing the run."""
        self.ops.append({"op": "end", "key": key, "status": status})

    # -- replay --------------------------------------------------------------------------------
    def run_id(self, key: str) -> str | None:
        """MLflow run id for ``key`` once created."""
        return self.run_ids.get(key)

    def flush(self, force: bool = False) -> bool:
        """Apply queued operations in order; True when nothing is left.

        Stops at the first failure and keeps that operation and the rest. Without ``force`` it
        does not retry before ``retry_interval_s`` has passed since the last failure.
        """
        if not self.ops:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self.ops:
            try:
                self._apply(self.ops[0])
            except Exception as exc:
                self.failures += 1
                frames = traceback.extract_tb(exc.__traceback__)
                where = (
                    f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
                )
                text = str(exc).splitlines()[0][:300] if str(exc) else ""
                self.last_error = f"{type(exc).__name__}: {text}{where}"
                self._next_try = time.monotonic() + self.retry_interval_s
                return False
            self.ops.pop(0)
        self.last_error = None
        return True

    def pending(self) -> dict[str, Any]:
        """What a later tracker needs to continue: URI, run ids and unsent operations."""
        return {"uri": self.uri, "run_ids": self.run_ids, "ops": self.ops}

    def save_pending(self, path: str | Path) -> Path | None:
        """Write unsent operations to ``path`` (or remove a stale file); the path when written."""
        path = Path(path)
        if not self.ops:
            path.unlink(missing_ok=True)
            return None
        path.write_text(json.dumps(self.pending(), indent=1))
        return path

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        artifact_location = None
        if self.uri.startswith("sqlite:///"):
            # Keep artifacts next to the embedded store, not in the current directory.
            root = Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts"
            artifact_location = (root / name).resolve().as_uri()
        return str(self.client.create_experiment(name, artifact_location=artifact_location))

    def _apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "create_run":
            if op["key"] in self.run_ids:
                return
            exp_id = self._experiment_id(op["experiment"])
            run = self.client.create_run(exp_id, run_name=op["run_name"], tags=op["tags"])
            self.run_ids[op["key"]] = run.info.run_id
            return
        run_id = self.run_ids.get(op["key"])
        if run_id is None:
            raise RuntimeError(f"run {op['key']} was never created")
        if kind == "log":
            from mlflow.entities import Metric, Param, RunTag

            metrics = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
            if self.skip_logged_steps:
                metrics = self._unlogged(run_id, metrics)
            params = [Param(k, v) for k, v in op["params"].items()]
            tags = [RunTag(k, v) for k, v in op["tags"].items()]
            for i in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000 items
                self.client.log_batch(
                    run_id,
                    metrics=metrics[i : i + 900],
                    params=params if i == 0 else [],
                    tags=tags if i == 0 else [],
                )
            if self.skip_logged_steps:
                # Only once the store has them: a failed send is retried, not skipped.
                for metric in metrics:
                    self._logged_steps[(run_id, metric.key)].add(metric.step)
        elif kind == "artifacts":
            self.client.log_artifacts(run_id, op["local_dir"], op["artifact_path"])
        elif kind == "register":
            self._register(run_id, op)
        elif kind == "input":
            self._log_input(run_id, op)
        elif kind == "end":
            self.client.set_terminated(run_id, status=op["status"])
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _unlogged(self, run_id: str, metrics: list[Any]) -> list[Any]:
        """The metrics at a step the run does not hold yet (each (key, step) once)."""
        out, seen = [], set()
        for metric in metrics:
            cache_key = (run_id, metric.key)
            if cache_key not in self._logged_steps:
                history = self.client.get_metric_history(run_id, metric.key)
                self._logged_steps[cache_key] = {int(m.step) for m in history}
            pair = (metric.key, metric.step)
            if pair not in seen and metric.step not in self._logged_steps[cache_key]:
                seen.add(pair)
                out.append(metric)
        return out

    def _register(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.exceptions import MlflowException

        name = op["model_name"]
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{op['artifact_path']}"
        version = self.client.create_model_version(
            name, source, run_id=run_id, tags=op.get("tags") or None
        )
        self.client.set_registered_model_alias(name, op["alias"], version.version)

    def _log_input(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            op["name"], op["digest"], op["source_type"], op["source"], profile=op.get("profile")
        )
        tags = [InputTag("mlflow.data.context", op["context"])]
        tags += [InputTag(k, v) for k, v in op.get("tags", {}).items()]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


def sync_pending(path: str | Path, uri: str | None = None) -> Tracker:
    """Replay a ``tracking_pending.json``; the file is removed once everything is sent.

    Args:
        path: The pending file, or a checkpoint folder holding one.
        uri: Send to this tracking URI instead of the recorded one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PENDING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pending tracking operations")
    data = json.loads(path.read_text())
    tracker = Tracker(
        uri or data["uri"], ops=data["ops"], run_ids=data["run_ids"], skip_logged_steps=True
    )
    tracker.flush(force=True)
    tracker.save_pending(path)
    return tracker
