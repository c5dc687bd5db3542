"""The real CrashChat test annotations (from ../shared; skipped where absent)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import SHARED_ANNOTATIONS, needs_shared
from crashchat.data.prompts import guess_task_from_prompt
from crashchat.data.validation import load_annotations

pytestmark = needs_shared(SHARED_ANNOTATIONS)


def test_cli_counts_match_the_published_test_split() -> None:
    exe = Path(sys.executable).parent / "crashchat"
    out = subprocess.run(
        [str(exe), "data", "validate", str(SHARED_ANNOTATIONS), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["valid"] and obj["files"] == 7 and obj["errors"] == []
    assert list(obj["per_task"].values()) == [1839, 1839, 1839, 1838, 2324, 2324]


def test_group_file_tasks_recognised_and_prompts_travel() -> None:
    files = {f.path.name: f for f in load_annotations([SHARED_ANNOTATIONS])}
    group = files["crashchat_dada_video_total_perception_centric_test.json"]
    counts: dict[str, int] = {}
    for s in group.samples:
        counts[s.task] = counts.get(s.task, 0) + 1
    assert counts == {"crash_localization": 1162, "pre_crash_localization": 1162}
    # The generic keyword rules alone also recognise every upstream prompt.
    for f in files.values():
        for s in f.samples[:1]:
            assert guess_task_from_prompt(s.prompt) == s.task, f.path.name
