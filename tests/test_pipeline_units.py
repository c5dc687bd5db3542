"""The pipeline's stage report: each stage line carries its own wall time."""

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
