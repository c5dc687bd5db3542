"""MLflow tracking that survives an unreachable server, and the model registry."""

from crashchat.tracking.tracker import (
    PENDING_FILE,
    Tracker,
    default_tracking_uri,
    resolve_tracking_uri,
    sync_pending,
)

__all__ = [
    "PENDING_FILE",
    "Tracker",
    "default_tracking_uri",
    "resolve_tracking_uri",
    "sync_pending",
]
