"""`crashchat compare`: strategy table from MLflow runs, deltas, best marks, paper column, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from crashchat.evaluation.compare import PAPER, run_compare


def _run(client: MlflowClient, exp: str, mixture: str, strategy: str, metrics: dict) -> str:
    run = client.create_run(exp, tags={"mixture": mixture, "strategy": strategy,
                                       "checkpoint": f"/ckpt/{mixture}"})  # fmt: skip
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
    assert "| crash_recognition | F1 | 0.7000 | 0.7500 | **0.9000** | 0.9500 | - |" in md
    assert "| crash_recognition | Accuracy | **0.8000** | - | - | - | 0.6000 |" in md
    with (tmp_path / "out" / "comparison.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(comp.rows)
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "out" / "best_checkpoints.json").read_text()) == comp.best
    logged = {a.path for a in client.list_artifacts(run_id, "comparison")}
    assert "comparison/comparison.md" in logged and "comparison/comparison.png" in logged
