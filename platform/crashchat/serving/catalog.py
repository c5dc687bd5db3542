"""What is being served: the checkpoints, their tasks and prompts, and which one answers a task.

A :class:`Catalog` is built from a folder of platform checkpoints (as ``crashchat train --output``
writes them) or from an MLflow experiment's registry aliases, plus an optional base model served
as ``baseline``. It knows nothing of Ray: the router asks it where a task goes.
:func:`build_catalog` is the one place that choice is made, for every entry point
(``crashchat serve up|deploy|config``, the pipeline's serve stage, Serve's ``build_app``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crashchat.data.prompts import PromptCatalog
from crashchat.data.tasks import TASK_KEYS, get_task
from crashchat.models.checkpoint import (
    META_FILE,
    PROCESSOR_DIR,
    PROMPTS_FILE,
    is_checkpoint,
    verify_checkpoint,
)
from crashchat.models.metadata import model_frame_size

BASELINE = "baseline"
BEST_FILE = "best_checkpoints.json"
# Absolute, so a CLI, a Ray job (whose working_dir copy Ray may delete) and a Serve controller
# (whose current directory is Ray's) all download registry checkpoints to the same place.
DEFAULT_DOWNLOAD_ROOT = Path(tempfile.gettempdir()) / "crashchat-serve-models"
# ``auto`` without evaluations: the most specialised checkpoint trained on the task wins.
STRATEGY_ORDER = ("monotask", "homogeneous", "heterogeneous")


class CatalogError(ValueError):
    """Nothing servable was found, or a checkpoint is unusable; the message says where."""


class RouteError(LookupError):
    """A request names a task or checkpoint that is not served (HTTP 404)."""


@dataclass(frozen=True)
class ServedCheckpoint:
    """One deployable model: a platform checkpoint, or the untuned base as ``baseline``."""

    name: str
    path: str
    tasks: tuple[str, ...]
    strategy: str
    base_model: str
    prompts: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def is_baseline(self) -> bool:
        """True for the untuned base model."""
        return self.name == BASELINE

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form for ``GET /v1/checkpoints``."""
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        out.pop("prompts")
        return out


def deployment_name(checkpoint: str) -> str:
    """Serve deployment name of a checkpoint."""
    return f"model_{checkpoint}"


def read_checkpoint(path: str | Path, name: str | None = None) -> ServedCheckpoint:
    """A verified platform checkpoint as a :class:`ServedCheckpoint`.

    Raises:
        CatalogError: when the checkpoint fails verification (names the file).
    """
    root = Path(path)
    try:
        meta = verify_checkpoint(root)
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    prompts = PromptCatalog.load(root / PROMPTS_FILE).as_dict()
    return ServedCheckpoint(
        name=name or str(meta.get("mixture") or root.name),
        path=str(root.resolve()),
        tasks=tuple(meta["tasks"]),
        strategy=str(meta.get("strategy", "")),
        base_model=str(meta["base_model"]),
        prompts=prompts,
        run_id=meta.get("mlflow_run_id"),
    )


def baseline_checkpoint(base_model: str | Path, prompts: dict[str, str]) -> ServedCheckpoint:
    """The untuned base, answering every task whose prompt the catalog knows."""
    path = str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
    return ServedCheckpoint(
        name=BASELINE,
        path=path,
        tasks=tuple(t for t in TASK_KEYS if t in prompts),
        strategy=BASELINE,
        base_model=path,
        prompts={t: p for t, p in prompts.items() if t in TASK_KEYS},
    )


class Catalog:
    """Served checkpoints and the routing of ``(task, checkpoint)`` to one of them."""

    def __init__(
        self,
        checkpoints: list[ServedCheckpoint],
        best: dict[str, str] | None = None,
    ) -> None:
        if not checkpoints:
            raise CatalogError("no checkpoint to serve")
        names = [c.name for c in checkpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CatalogError(f"two checkpoints share the name(s) {dupes}")
        self.checkpoints = {c.name: c for c in checkpoints}
        self.best = {t: n for t, n in (best or {}).items() if n in self.checkpoints}

    @property
    def names(self) -> list[str]:
        """Served checkpoint names."""
        return list(self.checkpoints)

    @property
    def tasks(self) -> list[str]:
        """Tasks some checkpoint answers, in registry order."""
        have = {t for c in self.checkpoints.values() for t in c.tasks}
        return [t for t in TASK_KEYS if t in have]

    def auto(self, task: str) -> str:
        """The checkpoint answering ``task`` under ``auto``.

        The best evaluated checkpoint when evaluations exist; else one trained on the task
        (monotask, then group, then all-task); else the baseline.
        """
        if task in self.best:
            return self.best[task]
        trained = [c for c in self.checkpoints.values() if task in c.tasks and not c.is_baseline]
        for strategy in STRATEGY_ORDER:
            for c in trained:
                if c.strategy == strategy:
                    return c.name
        if trained:
            return trained[0].name
        if BASELINE in self.checkpoints and task in self.checkpoints[BASELINE].tasks:
            return BASELINE
        raise RouteError(f"no served checkpoint answers task {task!r}; served: {self.tasks}")

    def resolve_tasks(self, tasks: list[str] | str | None) -> list[str]:
        """Task keys for a request's ``tasks`` (a list, ``all`` or None for all).

        Raises:
            RouteError: for an unknown task, naming the known ones.
        """
        if tasks is None or tasks == "all" or tasks == ["all"]:
            return self.tasks
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        out = []
        for t in tasks:
            try:
                key = get_task(t).key
            except (KeyError, ValueError):
                raise RouteError(f"unknown task {t!r}; known tasks: {self.tasks}") from None
            if key not in self.tasks:
                raise RouteError(f"task {key!r} is not served; served tasks: {self.tasks}")
            if key not in out:
                out.append(key)
        if not out:
            raise RouteError(f"no task given; known tasks: {self.tasks}")
        return out

    def route(self, task: str, checkpoint: str = "auto") -> ServedCheckpoint:
        """The checkpoint that answers ``task`` for a request naming ``checkpoint``.

        Raises:
            RouteError: unknown checkpoint, or one that was not trained on ``task``.
        """
        name = self.auto(task) if checkpoint in ("", "auto") else checkpoint
        if name not in self.checkpoints:
            raise RouteError(f"unknown checkpoint {name!r}; served checkpoints: {self.names}")
        chosen = self.checkpoints[name]
        if task not in chosen.tasks:
            raise RouteError(
                f"checkpoint {name!r} does not answer task {task!r}; it answers {list(chosen.tasks)}"
            )
        return chosen

    def to_json(self) -> dict[str, Any]:
        """What ``GET /v1/checkpoints`` returns."""
        auto = {}
        for t in self.tasks:
            try:
                auto[t] = self.auto(t)
            except RouteError:
                continue
        return {
            "checkpoints": [c.to_json() for c in self.checkpoints.values()],
            "tasks": self.tasks,
            "auto": auto,
            "best_evaluated": dict(self.best),
        }

    def to_args(self) -> dict[str, Any]:
        """Plain data that rebuilds this catalog (Serve application arguments)."""
        return {
            "checkpoints": [
                asdict(c) | {"tasks": list(c.tasks)} for c in self.checkpoints.values()
            ],
            "best": dict(self.best),
        }

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Catalog:
        """Inverse of :meth:`to_args`."""
        cps = [ServedCheckpoint(**(c | {"tasks": tuple(c["tasks"])})) for c in args["checkpoints"]]
        return cls(cps, args.get("best"))


def _best_from_file(path: Path, checkpoints: list[ServedCheckpoint]) -> dict[str, str]:
    """Task -> checkpoint name from a ``best_checkpoints.json`` written by ``crashchat compare``."""
    data = json.loads(path.read_text())
    by_path = {str(Path(c.path).resolve()): c.name for c in checkpoints}
    names = {c.name for c in checkpoints}
    out = {}
    for task, entry in data.items():
        ckpt = str(entry.get("checkpoint") or "")
        resolved = str(Path(ckpt).resolve()) if ckpt else ""
        if resolved in by_path:
            out[task] = by_path[resolved]
        elif entry.get("mixture") in names:
            out[task] = str(entry["mixture"])
    return out


def _union_prompts(
    checkpoints: list[ServedCheckpoint], prompts_file: str | Path | None
) -> dict[str, str]:
    prompts: dict[str, str] = {}
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise CatalogError(f"{path}: prompts file not found")
        prompts = PromptCatalog.load(path).as_dict()
    for c in checkpoints:
        for t, p in c.prompts.items():
            prompts[t] = p
    return prompts


def build_catalog_from_dir(
    folder: str | Path,
    base_model: str | Path | None = None,
    best_file: str | Path | None = None,
    with_baseline: bool = True,
    prompts: str | Path | None = None,
) -> Catalog:
    """Every platform checkpoint directly under ``folder`` (or ``folder`` itself).

    The baseline is ``base_model``, else the base the checkpoints were trained from when it is a
    local folder. ``best_file`` (default ``folder/best_checkpoints.json`` when present) routes
    ``auto``. ``prompts`` (a ``prompts.json``) lets the baseline answer tasks no checkpoint
    was trained on.

    Raises:
        CatalogError: when no checkpoint is found or one fails verification.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CatalogError(f"{root}: checkpoint folder not found")
    dirs = [root] if is_checkpoint(root) else sorted(p for p in root.iterdir() if is_checkpoint(p))
    if not dirs:
        raise CatalogError(f"{root}: no platform checkpoint ({META_FILE}) found in it")
    checkpoints = [read_checkpoint(d) for d in dirs]
    base = base_model or checkpoints[0].base_model
    if with_baseline and base and Path(base).is_dir():
        checkpoints.append(baseline_checkpoint(base, _union_prompts(checkpoints, prompts)))
    best_path = Path(best_file) if best_file else root / BEST_FILE
    best = _best_from_file(best_path, checkpoints) if best_path.is_file() else {}
    return Catalog(checkpoints, best)


def build_catalog_from_registry(
    experiment: str,
    download_root: str | Path,
    tracking_uri: str | None = None,
    base_model: str | Path | None = None,
    with_baseline: bool = True,
    prompts: str | Path | None = None,
) -> Catalog:
    """The checkpoints registered (with an alias) by the runs of MLflow ``experiment``.

    Each alias becomes a checkpoint of that name, downloaded under ``download_root``. The newest
    ``strategy-comparison`` run's ``best_checkpoints.json`` routes ``auto``.

    Raises:
        CatalogError: when the experiment or its registered checkpoints are not found.
    """
    from mlflow.tracking import MlflowClient

    from crashchat.tracking.registry import resolve_model_ref
    from crashchat.tracking.tracker import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CatalogError(f"MLflow experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    run_ids = {r.info.run_id for r in runs}
    dest = Path(download_root)
    checkpoints = []
    for model in client.search_registered_models():
        for alias, version in sorted((model.aliases or {}).items()):
            mv = client.get_model_version(model.name, str(version))
            if mv.run_id not in run_ids:
                continue
            local = resolve_model_ref(f"models:/{model.name}@{alias}", dest / alias, uri)
            checkpoints.append(read_checkpoint(local, name=alias))
    if not checkpoints:
        raise CatalogError(f"experiment {experiment!r} has no registered checkpoint with an alias")
    base = base_model or checkpoints[0].base_model
    if with_baseline and base and Path(base).is_dir():
        checkpoints.append(baseline_checkpoint(base, _union_prompts(checkpoints, prompts)))
    best: dict[str, str] = {}
    comparisons = [r for r in runs if r.data.tags.get("kind") == "comparison"]
    if comparisons:
        newest = max(comparisons, key=lambda r: r.info.start_time)
        import mlflow

        try:
            got = mlflow.artifacts.download_artifacts(
                run_id=newest.info.run_id,
                artifact_path=BEST_FILE,
                dst_path=str(dest / "comparison"),
                tracking_uri=uri,
            )
            raw = json.loads(Path(got).read_text())
            names = {c.name for c in checkpoints}
            best = {t: e["mixture"] for t, e in raw.items() if e.get("mixture") in names}
        except Exception:  # a comparison without the file: route by strategy instead
            best = {}
    return Catalog(checkpoints, best)


def build_catalog(
    checkpoints: str | Path | None = None,
    registry: str | None = None,
    base_model: str | Path | None = None,
    best: str | Path | None = None,
    prompts: str | Path | None = None,
    download_root: str | Path | None = DEFAULT_DOWNLOAD_ROOT,
    tracking_uri: str | None = None,
) -> Catalog:
    """What to serve, from exactly one source: a checkpoints folder or an MLflow registry.

    Args:
        checkpoints: Folder of platform checkpoints (or one checkpoint).
        registry: MLflow experiment whose registered aliases are served.
        base_model: Served as ``baseline`` [default: the base the checkpoints were trained from,
            when it is a local folder].
        best: ``best_checkpoints.json`` from ``crashchat compare``, routing ``auto`` [default:
            ``checkpoints/best_checkpoints.json`` when present; for a registry, the newest
            comparison run's file].
        prompts: A ``prompts.json`` letting the baseline answer tasks no checkpoint learned.
        download_root: Where registry checkpoints are downloaded [:data:`DEFAULT_DOWNLOAD_ROOT`].
        tracking_uri: MLflow tracking URI of the registry [default: as the platform resolves it].

    Raises:
        CatalogError: when neither or both sources are given, a file is missing, nothing
            servable is found or a checkpoint fails verification; the message says which.
    """
    if (checkpoints is None) == (registry is None):
        raise CatalogError(
            "give exactly one checkpoint source: checkpoints (a folder, --checkpoints DIR) or "
            "registry (an MLflow experiment, --registry EXPERIMENT)"
        )
    if best is not None and not Path(best).is_file():
        raise CatalogError(f"{best}: best-checkpoints file not found")
    base = base_model
    if base is not None and Path(base).exists():
        base = str(Path(base).resolve())
    try:
        if checkpoints is not None:
            return build_catalog_from_dir(checkpoints, base, best, prompts=prompts)
        catalog = build_catalog_from_registry(
            str(registry),
            download_root or DEFAULT_DOWNLOAD_ROOT,
            tracking_uri,
            base,
            prompts=prompts,
        )
    except FileNotFoundError as exc:
        raise CatalogError(str(exc)) from None
    if best is None:
        return catalog
    # An explicit file overrides the comparison run's picks, as it does for a folder.
    served = list(catalog.checkpoints.values())
    return Catalog(served, _best_from_file(Path(best), served))


def processor_dir(c: ServedCheckpoint) -> str:
    """Folder of the processor a checkpoint was trained with (the base's for the baseline)."""
    return str(Path(c.path) / PROCESSOR_DIR) if is_checkpoint(c.path) else c.path


def processor_group(c: ServedCheckpoint) -> str:
    """Checkpoints whose processors agree share one decoded clip: a hash of the settings."""
    digest = hashlib.sha1(str(model_frame_size(c.base_model)).encode())
    folder = Path(processor_dir(c))
    for name in (
        "processor_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]
