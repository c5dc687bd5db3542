"""Resolve a model reference: a platform checkpoint, a base model, or an MLflow model URI."""

from __future__ import annotations

from pathlib import Path

from crashchat.tracking.tracker import resolve_tracking_uri


def resolve_model_ref(ref: str, download_root: str | Path, tracking_uri: str | None = None) -> str:
    """A local path (or hub id) for ``ref``.

    ``models:/name@alias`` and ``models:/name/version`` are looked up in the registry of the
    tracking store and their artifacts downloaded into ``download_root``; ``runs:/...`` URIs
    likewise. Anything else is returned unchanged. No global MLflow state is changed.

    Raises:
        FileNotFoundError: when the registry has no such model (the message names it).
    """
    if not ref.startswith(("models:/", "runs:/")):
        return ref
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    dest = Path(download_root)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        source = ref
        if ref.startswith("models:/"):
            spec = ref[len("models:/") :]
            if "@" in spec:
                name, alias = spec.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, number = spec.rsplit("/", 1)
                version = client.get_model_version(name, number)
            source = str(version.source)
        return str(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dest), tracking_uri=uri
            )
        )
    except (MlflowException, ValueError) as exc:
        raise FileNotFoundError(
            f"{ref}: not found in the MLflow registry at {uri} ({exc})"
        ) from None
