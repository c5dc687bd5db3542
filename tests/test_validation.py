"""Validation reports every problem with file, record index and field, and never half-loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crashchat.data.annotations import make_record, parse_file_name
from crashchat.data.validation import AnnotationError, load_annotations, validate_paths

REC_PROMPT = "Did a collision happen? Answer 'Yes' or 'No'."
LOC_PROMPT = "Give the time range of the crash as 'start - end seconds'."
PRE_PROMPT = "When does the first visible sign of the crash appear?"


def write(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records))
    return path


def issues_of(
    path: Path, video_root: Path | None = None
) -> list[tuple[int | None, str | None, str]]:
    report, loaded = validate_paths([path], video_root)
    assert not report.valid and loaded == []
    assert all(e.file == str(path) for e in report.errors)
    return [(e.index, e.field, e.message) for e in report.errors]


def test_valid_file_loads_with_split_and_task(tmp_path: Path) -> None:
    path = write(
        tmp_path / "crashchat_x_crash_recognition_val.json",
        [
            make_record("videos/a.mp4", REC_PROMPT, "Yes", "S"),
            make_record("videos/b.mp4", REC_PROMPT, "No", "S"),
        ],
    )
    [ann] = load_annotations([path])
    assert [s.task for s in ann.samples] == ["crash_recognition"] * 2
    assert {s.split for s in ann.samples} == {"val"}
    assert ann.samples[0].prompt == REC_PROMPT


def test_every_bad_record_is_reported_with_index_and_field(tmp_path: Path) -> None:
    good = make_record("videos/a.mp4", LOC_PROMPT, "1.9 - 4.0 seconds", "S")
    missing_turn = make_record("videos/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S")
    missing_turn["conversations"] = missing_turn["conversations"][:1]
    extra_turn = make_record("videos/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S")
    extra_turn["conversations"].append({"from": "human", "value": "more?"})
    wrong_role = make_record("videos/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S")
    wrong_role["conversations"][1]["from"] = "assistant"
    no_tag = make_record("videos/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S")
    no_tag["conversations"][0]["value"] = LOC_PROMPT
    records = [
        good,
        missing_turn,
        extra_turn,
        wrong_role,
        no_tag,
        make_record("videos/a.mp4", LOC_PROMPT, "4.5 seconds", "S"),
        make_record("videos/a.mp4", LOC_PROMPT, "4.0 - 1.9 seconds", "S"),
        make_record("videos/a.mp4", LOC_PROMPT, "-1.0 - 2.0 seconds", "S"),
        make_record("/abs/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S"),
        make_record("videos/../../etc/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S"),
        {"video": ["videos/a.mp4"], "conversations": [], "source": "S", "surprise": 1},
        "not a record",
    ]
    path = write(tmp_path / "crashchat_x_crash_localization_test.json", records)
    found = issues_of(path)
    by_index: dict[int | None, list[tuple[str | None, str]]] = {}
    for index, field, message in found:
        by_index.setdefault(index, []).append((field, message))
    assert 0 not in by_index
    assert by_index[1] == [("conversations", "expected exactly 2 turns [human, gpt], got 1")]
    assert by_index[2][0][0] == "conversations" and "got 3" in by_index[2][0][1]
    assert by_index[3] == [("conversations[1].from", "expected role 'gpt', got 'assistant'")]
    assert by_index[4] == [("conversations[0].value", "missing the <video> tag in the human turn")]
    assert (
        by_index[5][0][0] == "conversations[1].value"
        and "expected an interval" in by_index[5][0][1]
    )
    assert "ends before it starts" in by_index[6][0][1]
    assert "negative time" in by_index[7][0][1]
    assert by_index[8][0][0] == "video[0]" and "absolute" in by_index[8][0][1]
    assert by_index[9][0][0] == "video[0]" and "escapes the video root" in by_index[9][0][1]
    assert ("surprise", "Extra inputs are not permitted") in by_index[10]
    assert by_index[11][0][0] is None and "expected a record object" in by_index[11][0][1]


@pytest.mark.parametrize(
    ("task", "answer", "expect"),
    [
        ("crash_recognition", "1.9 - 4.0 seconds", "expected 'Yes' or 'No'"),
        ("pre_crash_localization", "Yes", "expected a timestamp"),
        ("pre_crash_localization", "1.9 - 4.0 seconds", "expected a timestamp"),
        ("crash_localization", "Yes", "expected an interval"),
        ("crash_description", "  ", "empty answer"),
    ],
)
def test_answer_must_fit_task_kind(tmp_path: Path, task: str, answer: str, expect: str) -> None:
    from crashchat.data.tasks import get_task

    name = get_task(task).file_name
    path = write(
        tmp_path / f"crashchat_x_{name}_train.json",
        [make_record("videos/a.mp4", "prompt", answer, "S")],
    )
    [(index, field, message)] = issues_of(path)
    assert (index, field) == (0, "conversations[1].value")
    assert expect in message and task in message


def test_missing_video_under_root(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "here.mp4").write_bytes(b"x")
    path = write(
        tmp_path / "crashchat_x_crash_recognition_test.json",
        [
            make_record("videos/here.mp4", REC_PROMPT, "Yes", "S"),
            make_record("videos/gone.mp4", REC_PROMPT, "No", "S"),
        ],
    )
    [(index, field, message)] = issues_of(path, video_root=tmp_path)
    assert (index, field) == (1, "video[0]") and "not found" in message and "gone.mp4" in message
    assert validate_paths([path])[0].valid  # without a root, existence is not checked


def test_file_level_problems_name_the_file(tmp_path: Path) -> None:
    bad_json = tmp_path / "crashchat_x_crash_recognition_test.json"
    bad_json.write_text('[{"video": ')
    [(index, field, message)] = issues_of(bad_json)
    assert index is None and field is None and "invalid JSON" in message
    not_list = write(tmp_path / "crashchat_y_crash_recognition_test.json", {"video": []})  # type: ignore[arg-type]
    assert "expected a JSON list" in issues_of(not_list)[0][2]
    empty = write(tmp_path / "crashchat_z_crash_recognition_test.json", [])
    assert "no records" in issues_of(empty)[0][2]
    missing = tmp_path / "crashchat_nope_crash_recognition_test.json"
    assert "file not found" in issues_of(missing)[0][2]


def test_mixed_file_tasks_come_from_prompts(tmp_path: Path) -> None:
    path = write(
        tmp_path / "crashchat_x_perception_centric_val.json",
        [
            make_record("videos/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S"),
            make_record("videos/a.mp4", PRE_PROMPT, "0.5 seconds", "S"),
        ],
    )
    [ann] = load_annotations([path])
    assert [s.task for s in ann.samples] == ["crash_localization", "pre_crash_localization"]
    assert ann.info.group == "perception_centric"


def test_mixed_file_record_with_unrecognisable_prompt(tmp_path: Path) -> None:
    path = write(
        tmp_path / "crashchat_x_heterogeneous_train.json",
        [make_record("videos/a.mp4", "What colour is the sky?", "blue", "S")],
    )
    [(index, field, message)] = issues_of(path)
    assert (index, field) == (
        0,
        "conversations[0].value",
    ) and "cannot recognise the task" in message


def test_prompt_must_be_shared_within_a_task_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "crashchat_x_crash_recognition_test.json",
        [
            make_record("videos/a.mp4", REC_PROMPT, "Yes", "S"),
            make_record("videos/b.mp4", REC_PROMPT + " Please.", "No", "S"),
        ],
    )
    [(index, field, message)] = issues_of(path)
    assert (index, field) == (
        1,
        "conversations[0].value",
    ) and "differs from the one in record 0" in message


def test_invalid_file_is_never_half_loaded(tmp_path: Path) -> None:
    good = write(
        tmp_path / "crashchat_x_crash_recognition_test.json",
        [make_record("videos/a.mp4", REC_PROMPT, "Yes", "S")],
    )
    bad = write(
        tmp_path / "crashchat_x_crash_localization_test.json",
        [
            make_record("videos/a.mp4", LOC_PROMPT, "1.0 - 2.0 seconds", "S"),
            make_record("videos/a.mp4", LOC_PROMPT, "oops", "S"),
        ],
    )
    with pytest.raises(AnnotationError) as err:
        load_annotations([good, bad])
    assert len(err.value.issues) == 1
    assert f"{bad} record 1 field conversations[1].value" in str(err.value)
    report, loaded = validate_paths([good, bad])
    assert [a.path for a in loaded] == [good] and report.records == 1


def test_file_names_upstream_and_synthetic() -> None:
    info = parse_file_name("crashchat_dada_video_total_cause_reasoning_test.json")
    assert (info.dataset, info.task, info.split) == ("dada_video_total", "causal_reasoning", "test")
    info = parse_file_name("crashchat_dada_video_total_heterogeneousl_val.json")
    assert (info.group, info.split) == ("heterogeneous", "val")
    info = parse_file_name("crashchat_synth_pre_crash_localization_train.json")
    assert (info.dataset, info.task) == ("synth", "pre_crash_localization")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "crashchat"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_cli_validate_json_and_exit_codes(tmp_path: Path) -> None:
    good = write(
        tmp_path / "crashchat_x_crash_recognition_test.json",
        [make_record("videos/a.mp4", REC_PROMPT, "Yes", "S")],
    )
    out = run_cli("data", "validate", str(good), "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["valid"] is True and obj["files"] == 1 and obj["records"] == 1
    assert obj["per_task"]["crash_recognition"] == 1 and obj["errors"] == []
    bad = write(
        tmp_path / "crashchat_x_crash_localization_test.json",
        [make_record("videos/a.mp4", LOC_PROMPT, "Yes", "S")],
    )
    out = run_cli("data", "validate", str(good), str(bad), "--json")
    assert out.returncode == 1
    obj = json.loads(out.stdout)
    assert obj["valid"] is False and obj["records"] == 1
    assert obj["errors"] == [
        {
            "file": str(bad),
            "index": 0,
            "field": "conversations[1].value",
            "message": "crash_localization answer: expected an interval like '1.9 - 4.0 seconds', got 'Yes'",
        }
    ]
    out = run_cli("data", "validate", str(bad))
    assert out.returncode == 1 and "record 0 field conversations[1].value" in out.stderr
