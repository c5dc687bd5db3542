"""Metric suites on hand-computed cases, the prediction file format, and `crashchat metrics`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crashchat.evaluation.metrics import (
    crash_localization_metrics,
    crash_starts_from,
    pre_crash_iou,
    pre_crash_metrics,
    recognition_metrics,
    task_metrics,
    temporal_iou,
    text_metrics,
)
from crashchat.evaluation.predictions import (
    FIELDS,
    PredictionFileError,
    build_record,
    check_records,
)


def _rec(
    task: str, answer: str, response: str, video: str = "videos/a.mp4", parser: str = "upstream"
) -> dict:
    return build_record(task, f"id-{answer}-{response}", video, "p", answer, response, parser)


def test_recognition_counts_and_fallbacks() -> None:
    recs = [
        _rec("crash_recognition", "Yes", "Yes"),  # TP
        _rec("crash_recognition", "Yes", "yes, there is a crash"),  # TP (substring)
        _rec("crash_recognition", "No", "The clip looks normal"),  # TN ("normal" contains "no")
        _rec("crash_recognition", "No", "Yes"),  # FP
        _rec("crash_recognition", "Yes", "No"),  # FN
        _rec("crash_recognition", "Yes", "yes and no"),  # unparseable: dropped
        _rec("crash_recognition", "Yes", "maybe"),  # unparseable: dropped
    ]
    m = recognition_metrics(recs)
    assert (m["N"], m["TP"], m["TN"], m["FP"], m["FN"], m["unparsed"]) == (5, 2, 1, 1, 1, 2)
    assert m["Accuracy"] == pytest.approx(3 / 5)
    assert m["Precision"] == pytest.approx(2 / 3) and m["Recall"] == pytest.approx(2 / 3)
    assert m["F1"] == pytest.approx(2 / 3)
    assert recs[2]["pred_label"] == "No" and m["parser"] == "upstream"
    # Upstream leaves a dropped answer out of its file; we keep the record without pred_label.
    assert "pred_label" not in recs[5] and recs[5]["parsed"] is False
    assert "parsed" not in recs[0]


def test_crash_localization_iou_ap_and_zero_fallback() -> None:
    assert temporal_iou((1.0, 3.0), (2.0, 4.0)) == pytest.approx(1 / 3)
    assert temporal_iou((0.0, 0.0), (0.0, 0.0)) == 0.0
    recs = [
        _rec("crash_localization", "2.0 - 4.0 seconds", "2.0 - 4.0 seconds"),  # IoU 1
        _rec("crash_localization", "2.0 - 4.0 seconds", "4.0 - 1.0 seconds"),  # swapped: 2/3
        _rec("crash_localization", "2.0 - 4.0 seconds", "from 3.0 to 5.0"),  # two numbers: 1/3
        _rec("crash_localization", "2.0 - 4.0 seconds", "no idea"),  # (0,0): IoU 0, kept
    ]
    m = crash_localization_metrics(recs)
    assert m["N"] == 4 and m["unparsed"] == 1
    assert m["mIoU"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 0) / 4)
    assert (m["AP@30"], m["AP@50"], m["AP@70"]) == (0.75, 0.5, 0.25)
    # Numbers, never null: the (0, 0) fallback is written; reversed answers keep their order.
    assert (recs[3]["pred_start"], recs[3]["pred_end"], recs[3]["parsed"]) == (0.0, 0.0, False)
    assert (recs[1]["pred_start"], recs[1]["pred_end"]) == (4.0, 1.0) and "parsed" not in recs[1]


def test_pre_crash_iou_rule_boundaries() -> None:
    gt, t_acc = 3.0, 5.0  # TTA_gt = 2
    assert pre_crash_iou(5.0, gt, t_acc) == 0.0  # pred >= t_acc
    assert pre_crash_iou(2.49, gt, t_acc) == 0.0  # pred < gt - 0.5
    assert pre_crash_iou(2.5, gt, t_acc) == 1.0  # gt - 0.5 <= pred < gt
    assert pre_crash_iou(2.99, gt, t_acc) == 1.0
    assert pre_crash_iou(3.0, gt, t_acc) == 1.0  # TTA equal
    assert pre_crash_iou(4.0, gt, t_acc) == pytest.approx(1 / 2)  # TTA_pred 1 vs 2
    assert pre_crash_iou(4.5, gt, t_acc) == pytest.approx(1 / 4)


def test_pre_crash_metrics_skip_rules_and_tta() -> None:
    recs = [
        _rec("pre_crash_localization", "3.0 seconds", "4.0 seconds", "v/a.mp4"),  # IoU .5
        _rec("pre_crash_localization", "3.0 seconds", "2.6 seconds", "v/b.mp4"),  # IoU 1
        _rec("pre_crash_localization", "3.0 seconds", "none", "v/c.mp4"),  # unparsed
        _rec("pre_crash_localization", "3.0 seconds", "3.0 seconds", "v/d.mp4"),  # no t_acc
        _rec("pre_crash_localization", "6.0 seconds", "5.0 seconds", "v/e.mp4"),  # TTA_gt <= 0
    ]
    starts = {"a.mp4": 5.0, "b.mp4": 5.0, "c.mp4": 5.0, "e.mp4": 5.0}
    m = pre_crash_metrics(recs, starts)
    assert m["N"] == 2 and m["unparsed"] == 1 and m["skipped_no_t_acc"] == 2
    assert m["mIoU"] == pytest.approx(0.75)
    assert (m["AP@30"], m["AP@50"], m["AP@70"]) == (1.0, 1.0, 0.5)
    assert m["mTTA_gt"] == pytest.approx(2.0) and m["mTTA_pred"] == pytest.approx((1 + 2.4) / 2)
    assert m["TTA_MAE"] == pytest.approx((1 + 0.4) / 2)
    # t_acc from an annotation file works as well as from crash-localization predictions.
    ann = [
        {
            "video": ["v/a.mp4"],
            "conversations": [
                {"from": "human", "value": "<video>\nq"},
                {"from": "gpt", "value": "5.0 - 6.0 seconds"},
            ],
        }
    ]
    assert crash_starts_from(ann) == {"a.mp4": 5.0}


def test_text_metrics_bleu_rouge_and_bertscore_unavailable() -> None:
    recs = [
        _rec("crash_description", "car hits a truck", "car hits a truck"),
        _rec("crash_description", "car hits a truck", "bus hits a wall"),
        _rec("crash_description", "car hits a truck", "   "),  # empty: skipped
    ]
    m = text_metrics(recs, "crash_description")
    assert m["N"] == 2 and m["unparsed"] == 1
    assert m["ROUGE-1_F"] == pytest.approx((1 + 0.5) / 2)  # 2 of 4 unigrams overlap
    assert m["ROUGE-2_F"] == pytest.approx((1 + 1 / 3) / 2)  # "hits a" of 3 bigrams
    assert 0 < m["BLEU"] < 1
    assert m["BERTScore_F1"] is None  # no local scorer: unavailable, never a number
    perfect = text_metrics([_rec("causal_reasoning", "red light", "red light")], "causal_reasoning")
    assert perfect["ROUGE-L_F"] == 1.0


UPSTREAM_ORDER = {
    "crash_recognition": ["gt_label", "pred_label"],
    "crash_localization": ["gt_start", "gt_end", "pred_start", "pred_end"],
    "pre_crash_localization": ["gt_time", "pred_time"],
    "crash_description": ["gt_caption", "pred_caption"],
    "causal_reasoning": ["gt_cause", "pred_cause"],
    "prevention_reasoning": ["gt_text", "pred_text"],
}
GOOD = {
    "crash_recognition": ("Yes", "Yes"),
    "crash_localization": ("2.0 - 4.0 seconds", "2.0 - 4.0 seconds"),
    "pre_crash_localization": ("3.0 seconds", "2.6 seconds"),
    "crash_description": ("car hits a truck ", "car hits a truck"),
    "causal_reasoning": ("speeding", "speeding"),
    "prevention_reasoning": ("slow down", "slow down"),
}


@pytest.mark.parametrize("task", list(UPSTREAM_ORDER))
def test_records_have_upstreams_fields_in_its_order(task: str) -> None:
    answer, response = GOOD[task]
    rec = _rec(task, answer, response)
    fields = ["data_id", "video_path", "prompt", *UPSTREAM_ORDER[task], "raw_response"]
    assert list(rec) == fields and None not in rec.values()


def test_unparsed_records_keep_numbers_or_lose_their_prediction_key() -> None:
    loc = _rec("crash_localization", "2.0 - 4.0 seconds", "3.0 - 4.0.")  # float("4.0.") fails
    assert (loc["pred_start"], loc["pred_end"], loc["parsed"]) == (0.0, 0.0, False)
    pre = _rec("pre_crash_localization", "3.0 seconds", "The cue appears at 4.5.")
    assert "pred_time" not in pre and pre["parsed"] is False and pre["gt_time"] == 3.0
    assert pre["raw_response"] == "The cue appears at 4.5."  # kept, nothing lost
    robust = _rec("pre_crash_localization", "3.0 seconds", "The cue appears at 4.5.", "v", "robust")
    assert robust["pred_time"] == 4.5 and "parsed" not in robust
    text = _rec("crash_description", "a car hits a truck", "  \n")
    assert text["pred_caption"] == "" and text["parsed"] is False  # never null
    assert text["gt_caption"] == "a car hits a truck"
    # Dropped answers pass validation without their prediction key; others do not.
    assert check_records("pre_crash_localization", [pre], "f.json") == [pre]
    unmarked = {k: v for k, v in pre.items() if k != "parsed"}
    with pytest.raises(PredictionFileError, match="missing field\\(s\\) pred_time"):
        check_records("pre_crash_localization", [unmarked], "f.json")


def test_parser_choice_changes_figures_and_is_recorded() -> None:
    loc = [
        _rec("crash_localization", "3.0 - 4.0 seconds", "3.0 - 4.0."),
        _rec("crash_localization", "3.0 - 4.0 seconds", "4.0 - 3.0 seconds"),  # swapped by IoU
    ]
    up = task_metrics("crash_localization", loc)
    rb = task_metrics("crash_localization", loc, parser="robust")
    assert (up["N"], up["mIoU"], up["unparsed"], up["parser"]) == (2, 0.5, 1, "upstream")
    assert (rb["N"], rb["mIoU"], rb["unparsed"], rb["parser"]) == (2, 1.0, 0, "robust")
    pre = [
        _rec("pre_crash_localization", "3.0 seconds", "The cue is at 2.6.", "v/a.mp4"),
        _rec("pre_crash_localization", "3.0 seconds", "4.0 seconds", "v/b.mp4"),
    ]
    starts = {"a.mp4": 5.0, "b.mp4": 5.0}
    up = task_metrics("pre_crash_localization", pre, starts)
    rb = task_metrics("pre_crash_localization", pre, starts, parser="robust")
    assert (up["N"], up["mIoU"], up["unparsed"]) == (1, 0.5, 1)  # dropped, as upstream
    assert (rb["N"], rb["mIoU"], rb["unparsed"]) == (2, 0.75, 0)
    for task, (answer, response) in GOOD.items():
        suite = task_metrics(task, [_rec(task, answer, response)], {"a.mp4": 5.0}, None, "robust")
        assert suite["parser"] == "robust"
    with pytest.raises(ValueError, match="upstream or robust"):
        task_metrics("crash_localization", loc, parser="strict")


def test_text_metrics_skip_empty_pairs_like_upstream() -> None:
    recs = [
        _rec("causal_reasoning", "red light", "red light"),
        _rec("causal_reasoning", "red light", ""),  # empty answer: skipped, counted unparsed
        {**_rec("causal_reasoning", "red light", "speeding"), "gt_cause": " "},  # empty GT
    ]
    m = task_metrics("causal_reasoning", recs)
    assert (m["N"], m["unparsed"], m["ROUGE-L_F"]) == (1, 1, 1.0)


def test_crash_starts_read_like_upstreams_pre_crash_script() -> None:
    def ann(video: str, answer: str) -> dict:
        convs = [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": answer}]
        return {"video": [video], "conversations": convs}

    anns = [
        ann("v/a.mp4", "5.0 - 6.0 seconds"),
        ann("w/a.mp4", "7.0 - 8.0 seconds"),  # same clip name: the first wins
        ann("v/b.mp4", "0.0 - 2.0 seconds"),  # a start at 0 cannot anchor a TTA: left out
        ann("v/c.mp4", "6.0 - 4.0 seconds"),  # the start as written
        {"video": ["v/d.mp4"], "conversations": [{"from": "human", "value": "q"}]},
    ]
    assert crash_starts_from(anns) == {"a.mp4": 5.0, "c.mp4": 6.0}
    recs = [_rec("crash_localization", "0.0 - 1.0 seconds", "x", "v/e.mp4")]
    recs.append(_rec("crash_localization", "2.5 - 3.0 seconds", "x", "v/f.mp4"))
    assert crash_starts_from(recs) == {"f.mp4": 2.5}


def test_prediction_file_errors_name_the_record(tmp_path: Path) -> None:
    good = [_rec("crash_recognition", "Yes", "Yes")]
    assert check_records("crash_recognition", good, "f.json") == good
    broken = [good[0], {"data_id": "x2", "raw_response": "Yes", "gt_label": "Yes"}]
    with pytest.raises(
        PredictionFileError, match=r"f.json: record 1 \(x2\): missing field\(s\) pred_label"
    ):
        check_records("crash_recognition", broken, "f.json")
    other = [_rec("crash_localization", "1.0 - 2.0 seconds", "1.0 - 2.0 seconds")]
    with pytest.raises(PredictionFileError, match="has the fields of task crash_localization"):
        check_records("crash_recognition", other, "f.json")
    assert set(FIELDS) == {
        "crash_recognition",
        "crash_localization",
        "pre_crash_localization",
        "crash_description",
        "causal_reasoning",
        "prevention_reasoning",
    }


def test_metrics_cli(tmp_path: Path) -> None:
    loc = [_rec("crash_localization", "2.0 - 4.0 seconds", "2.0 - 4.0 seconds", "v/a.mp4")]
    pre = [_rec("pre_crash_localization", "1.0 seconds", "0.6 seconds", "v/a.mp4")]
    (tmp_path / "loc.json").write_text(json.dumps(loc))
    (tmp_path / "pre.json").write_text(json.dumps(pre))
    cli = [sys.executable, "-m", "crashchat.cli", "metrics"]
    done = subprocess.run(
        [
            *cli,
            "--task",
            "pre_crash_localization",
            "--predictions",
            str(tmp_path / "pre.json"),
            "--crash-localization-gt",
            str(tmp_path / "loc.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert list(out)[:8] == [
        "N",
        "mIoU",
        "AP@30",
        "AP@50",
        "AP@70",
        "mTTA_gt",
        "mTTA_pred",
        "TTA_MAE",
    ]
    assert out["mIoU"] == 1.0 and out["parser"] == "upstream"
    loc_args = ["--task", "crash_localization", "--predictions", str(tmp_path / "loc.json")]
    robust = subprocess.run(
        [*cli, *loc_args, "--parse", "robust"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert robust.returncode == 0, robust.stderr
    assert json.loads(robust.stdout)["parser"] == "robust"
    bad = subprocess.run(
        [*cli, "--task", "crash_recognition", "--predictions", str(tmp_path / "loc.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "record 0" in bad.stderr
