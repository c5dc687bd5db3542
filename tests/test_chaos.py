"""The chaos benchmark's quick mode (``benchmarks/chaos.py --quick``): processes die, nothing is lost.

One run, three phases: a ``/v1/batch`` while Serve replicas are SIGKILLed, preprocessing while
the decode node's raylet is killed, and three times the capacity (about 2 minutes here; part of
``make test``). The figures are checked here; the full run's are in the README's Reliability
section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chaos") / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("chaos_items="), done.stdout[-2000:]
    result: dict[str, Any] = json.loads(out.read_text())
    result["last_line"] = dict(kv.split("=") for kv in last.split())
    return result


def test_bulk_inference_loses_and_repeats_nothing_while_replicas_die(
    report: dict[str, Any],
) -> None:
    for bulk in report["bulk"]:
        assert sum(bulk["kills"].values()) >= 3, bulk  # the chaos really happened
        assert bulk["lost"] == 0 and bulk["duplicates"] == 0, bulk
        assert bulk["succeeded"] >= 0.99 * bulk["good_items"], bulk
        assert bulk["bad_items_refused"] == bulk["items"] - bulk["good_items"], bulk
        assert bulk["rss_growth_pct_max"] < 10, bulk
    assert report["last_line"]["lost"] == "0" and report["last_line"]["duplicates"] == "0"


def test_preprocessing_keeps_every_clip_when_the_decode_node_dies(report: dict[str, Any]) -> None:
    loss = report["node_loss"]
    assert loss["node_killed"], loss
    assert loss["failed"] == 0, loss["failures"]
    assert loss["stored_clips"] == loss["distinct_clip_contents"], loss
    assert loss["duplicated_records"] == 0, loss


def test_overload_is_refused_fast_and_the_endpoint_recovers(report: dict[str, Any]) -> None:
    load = report["overload"]
    assert load["refused_503"] > 0, load
    assert load["refusals_with_retry_after"] == load["refused_503"], load
    assert load["refusal_p99_ms"] < 100, load
    assert load["admitted_ok"] == load["admitted"], load
    assert load["recovered_after_s"] is not None and load["recovered_after_s"] <= 30, load
    assert load["rss_growth_pct_max"] < 10, load
