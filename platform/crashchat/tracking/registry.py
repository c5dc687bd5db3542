"""Resolve a model reference: a platform checkpoint, a base model, or an MLflow model URI."""

from __future__ import annotations

from pathlib import Path

from crashchat.tracking.tracker import resolve_tracking_uri


def resolve_model_ref(ref: str, download_root: str | Path, tracking_uri: str | None = None) -> str:
    """A local path (or hub id) for ``ref``.

    ``models:/name@alias`` and ``models:/name/version`` are downloaded from the registry into
    ``download_root``; ``runs:/...`` URIs likewise. Anything else is returned unchanged.

    Raises:
        FileNotFoundError: when the registry has no such model (the message names it).
    """
    if not ref.startswith(("models:/", "runs:/")):
        return ref
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    dest = Path(download_root)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return str(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dest)))
    except MlflowException as exc:
        raise FileNotFoundError(
            f"{ref}: not found in the MLflow registry at {uri} ({exc})"
        ) from None
