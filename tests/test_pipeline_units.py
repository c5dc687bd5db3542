"""Pipeline units without Ray: the stage report's wall times, and the decoder pool that starts
no process until a clip needs decoding."""

from __future__ import annotations

import time
from typing import Any

from crashchat.pipeline import timed


def test_each_stage_line_carries_the_time_since_the_previous_one() -> None:
    got: list[dict[str, Any]] = []
    report = timed(got.append)
    time.sleep(0.15)
    report({"stage": "preprocess", "samples": 3})
    report({"stage": "train"})
    assert got[0] == {"stage": "preprocess", "samples": 3, "seconds": got[0]["seconds"]}
    assert got[0]["seconds"] >= 0.1 and got[1]["seconds"] < got[0]["seconds"]


def test_the_processor_pool_starts_no_actor_until_a_clip_needs_decoding() -> None:
    from crashchat.video.clip_processing import ProcessorPool

    # A rerun whose clips are all stored hands the pool no job: it must not start the actors
    # (each loads the model's processor: seconds of CPU), so this needs no Ray at all.
    pool = ProcessorPool("no-model", "no-out", size=2, options={}, timeout_s=5, retries=0)
    assert pool.run({}) == {}
    assert pool.actors == [] and pool.warming == {}
