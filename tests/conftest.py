"""Shared fixtures: a small synthetic dataset and a tiny model, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray waits 30 s for a new GCS to bind; on 2 busy cores right after a cluster test that was once
# not enough (CI). A longer budget only matters when startup is slow.
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "90")
# Ray Train's preemption watcher (an actor per training run, 2-3 s of CPU to start) polls for
# nodes being drained, which never happens to the tests' local clusters.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Ray Train's controller polls its workers every 2 s: a run's end, a report's checkpoint and a
# dead worker each wait for the next poll. A poll that does not answer in time is awaited again,
# not counted as a failure (that takes 10 minutes), so a shorter period cannot flap.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

_EXIT_STATUS = pytest.StashKey[int]()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_ANNOTATIONS = SHARED / "data" / "crashchat-annotations"
REAL_CLIPS = SHARED / "data" / "real-clips"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine synthetic clips (6 crash, 3 normal) with all annotation files."""
    from crashchat.config import SynthConfig
    from crashchat.data.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, SynthConfig(videos=9, seed=7))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random VideoLLaMA3 saved as a Hugging Face directory."""
    from crashchat.config import TinyModelConfig
    from crashchat.data.synth.labels import all_label_text
    from crashchat.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TinyModelConfig(), all_label_text())


def start_local_ray(num_cpus: int) -> None:
    """A fresh local Ray for a test module; one retry when its GCS did not come up in time."""
    import time

    import ray

    for attempt in (1, 2):
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            return
        except RuntimeError as exc:
            if attempt == 2 or "Timed out waiting" not in str(exc):
                raise
            ray.shutdown()
            time.sleep(5)


def needs_shared(path: Path) -> pytest.MarkDecorator:
    """Skip when ../shared (present on developer machines and CI, absent in a user's clone) is missing."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Why: once in CI the interpreter segfaulted during teardown *after* every test had passed
    # (native threads of Ray/decord/torch being torn down), turning a green run red. The
    # outcome is final here, so leave with pytest's own status and skip that teardown.
    # CRASHCHAT_TEST_NORMAL_EXIT=1 keeps the normal teardown (to chase the crash).
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None and os.environ.get("CRASHCHAT_TEST_NORMAL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
