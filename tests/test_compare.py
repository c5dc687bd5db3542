"""`crashchat compare`: strategy table from MLflow runs, deltas, best marks, paper column, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from crashchat.evaluation.compare import PAPER, run_compare


def _run(
    client: MlflowClient, exp: str, mixture: str, strategy: str, metrics: dict, **tags: str
) -> str:
    run = client.create_run(exp, tags={"mixture": mixture, "strategy": strategy,
                                       "checkpoint": f"/ckpt/{mixture}", **tags})  # fmt: skip
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_compare_builds_table_deltas_best_and_files(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cmp", artifact_location=(tmp_path / "art").as_uri())
    mono = _run(
        client,
        exp,
        "crash_recognition",
        "monotask",
        {"crash_recognition.F1": 0.70, "crash_recognition.Accuracy": 0.8},
    )
    _run(client, exp, "linguistic_centric", "homogeneous", {"crash_recognition.F1": 0.75})
    hete = _run(
        client,
        exp,
        "heterogeneous",
        "heterogeneous",
        {
            "crash_recognition.F1": 0.90,
            "reference.recognition_majority_rate": 0.6,
            "crash_localization.mIoU": 0.4,
            "crash_localization.AP_at_30": 0.5,
        },
    )
    _run(client, exp, "baseline", "baseline", {"crash_recognition.F1": 0.95})  # not a candidate
    client.create_run(exp, tags={"mixture": "crash_description", "strategy": "monotask"})  # no eval

    comp, files, run_id = run_compare("cmp", tmp_path / "out", reference=True, tracking_uri=uri)
    f1 = next(r for r in comp.rows if (r["task"], r["metric"]) == ("crash_recognition", "F1"))
    assert (f1["monotask"], f1["homogeneous"], f1["heterogeneous"], f1["baseline"]) == (
        0.70, 0.75, 0.90, 0.95)  # fmt: skip
    assert f1["best"] == "heterogeneous"  # best of the fine-tuned strategies
    assert abs(f1["Hete.-Ind."] - 0.20) < 1e-9 and abs(f1["Homo.-Ind."] - 0.05) < 1e-9
    assert f1["paper_heterogeneous"] == PAPER[("crash_recognition", "F1")]["heterogeneous"]
    ap30 = next(r for r in comp.rows if (r["task"], r["metric"]) == ("crash_localization", "AP@30"))
    assert ap30["heterogeneous"] == 0.5 and ap30["monotask"] is None and ap30["Hete.-Ind."] is None

    assert comp.best["crash_recognition"]["mixture"] == "heterogeneous"
    assert comp.best["crash_recognition"]["run_id"] == hete != mono
    assert comp.best["crash_localization"]["checkpoint"] == "/ckpt/heterogeneous"
    assert "crash_description" not in comp.best

    names = {f.name for f in files}
    assert names == {"comparison.md", "comparison.csv", "comparison.png", "best_checkpoints.json"}
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "| crash_recognition | F1 | upstream | 0.7000 | 0.7500 | **0.9000** | 0.9500 | - |" in md
    assert "| crash_recognition | Accuracy | upstream | **0.8000** | - | - | - | 0.6000 |" in md
    assert "not comparable" not in md
    with (tmp_path / "out" / "comparison.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(comp.rows)
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "out" / "best_checkpoints.json").read_text()) == comp.best
    logged = {a.path for a in client.list_artifacts(run_id, "comparison")}
    assert "comparison/comparison.md" in logged and "comparison/comparison.png" in logged
    # The comparison run says which runs it compared, and what ran it.
    compared = json.loads((tmp_path / "out" / "compared_runs.json").read_text())
    assert compared["heterogeneous"] == hete and compared["crash_recognition"] == mono
    run = client.get_run(run_id)
    assert set(run.data.tags["compared_runs"].split(",")) == set(compared.values())
    assert run.data.tags["mlflow.source.name"] and run.data.tags["crashchat.version"]
    assert "comparison/compared_runs.json" in logged


def test_compare_says_which_parser_made_each_figure(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cmp", artifact_location=(tmp_path / "art").as_uri())
    _run(
        client, exp, "crash_recognition", "monotask", {"crash_recognition.F1": 0.8}, parse="robust"
    )
    hete = _run(client, exp, "heterogeneous", "heterogeneous", {"crash_recognition.F1": 0.7})
    client.log_param(hete, "parse", "upstream")
    _run(client, exp, "baseline", "baseline", {"crash_localization.mIoU": 0.1}, parse="upstream")

    comp, _, _ = run_compare("cmp", tmp_path / "out", reference=True, tracking_uri=uri)
    f1 = next(r for r in comp.rows if (r["task"], r["metric"]) == ("crash_recognition", "F1"))
    assert (f1["parser_monotask"], f1["parser_heterogeneous"], f1["parser_homogeneous"]) == (
        "robust", "upstream", None)  # fmt: skip
    assert f1["parser"] == "Ind. robust, Hete. upstream"
    paper = PAPER[("crash_recognition", "F1")]
    # The paper column only next to upstream figures (or where we have none).
    assert f1["paper_monotask"] is None
    assert f1["paper_heterogeneous"] == paper["heterogeneous"]
    assert f1["paper_homogeneous"] == paper["homogeneous"]
    miou = next(r for r in comp.rows if (r["task"], r["metric"]) == ("crash_localization", "mIoU"))
    assert miou["parser"] == "upstream" and miou["paper_baseline"] is not None
    assert comp.best["crash_recognition"]["parser"] == "robust"

    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "| task | metric | parser |" in md
    assert "| crash_recognition | F1 | Ind. robust, Hete. upstream | **0.8000** |" in md
    assert "robust parser are not comparable with the paper's" in md
    with (tmp_path / "out" / "comparison.csv").open() as fh:
        rows = {(r["task"], r["metric"]): r for r in csv.DictReader(fh)}
    assert rows[("crash_recognition", "F1")]["parser_monotask"] == "robust"
    assert rows[("crash_recognition", "F1")]["paper_monotask"] == ""


def _evaluation(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True)
    reference = {"recognition_majority_rate": 0.6, "localization_prior_mIoU": 0.3}
    (folder / "evaluation.json").write_text(
        json.dumps({"metrics": metrics, "reference": reference})
    )
    return folder


def test_learning_bar_takes_each_check_from_the_checkpoint_that_meets_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crashchat.cli import app

    rec = _evaluation(tmp_path / "rec", {"crash_recognition": {"Accuracy": 0.9, "N": 20}})
    both = _evaluation(
        tmp_path / "both",
        {"crash_recognition": {"Accuracy": 0.7, "N": 20}, "crash_localization": {"mIoU": 0.45}},
    )
    result = CliRunner().invoke(app, ["learning-bar", str(rec), str(both)])
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout[result.stdout.index("{") :])["checks"]
    by_name = {c["check"]: c for c in checks}
    assert by_name["recognition accuracy >= majority rate + 0.1"]["eval_dir"] == str(rec)
    assert by_name["crash localization mIoU >= prior mIoU + 0.1"]["eval_dir"] == str(both)
    assert all(c["passed"] for c in checks)

    # Alone, the all-task checkpoint misses only the absolute recognition bar.
    weak = CliRunner().invoke(app, ["learning-bar", str(both)])
    assert weak.exit_code == 1
    failed = [c["check"] for c in json.loads(weak.stdout[weak.stdout.index("{") :])["checks"]
              if not c["passed"]]  # fmt: skip
    assert failed == ["recognition accuracy >= 0.8"]


def test_learning_bar_prefers_a_passing_check_to_a_higher_failing_one() -> None:
    from crashchat.evaluation.reference import best_checks

    name = "recognition accuracy >= majority rate + 0.1"
    checks = best_checks(
        {
            "high-but-failing": [{"check": name, "value": 0.8, "threshold": 0.9, "passed": False}],
            "lower-but-passing": [{"check": name, "value": 0.7, "threshold": 0.6, "passed": True}],
        }
    )
    assert [(c["eval_dir"], c["passed"]) for c in checks] == [("lower-but-passing", True)]
