"""``crashchat evaluate`` (and ``jobs/evaluate.py``), ``compare``, ``learning-bar``, ``metrics``:
batch evaluation on Ray Data and what is computed from its results."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from crashchat.cli.common import AddressOpt, SetOpt, console, fail, load_config
from crashchat.ray_utils import resolve_address


def evaluation_names(models: list[str]) -> list[tuple[str, str]]:
    """``(name, reference)`` per ``--model``: ``NAME=REF`` names it, else a registry alias or a
    folder's name does.

    Raises:
        ValueError: when two models would get the same name (and so the same output folder).
    """
    named = []
    for ref in models:
        name, sep, rest = ref.partition("=")
        if sep and not ref.startswith("models:/"):
            named.append((name, rest))
        elif ref.startswith("models:/") and "@" in ref:
            named.append((ref.rsplit("@", 1)[1], ref))
        else:
            named.append((Path(ref.rstrip("/")).name or ref, ref))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"two models share a name in {names}; name them with --model NAME=REF")
    return named


def evaluate(
    model: Annotated[
        list[str],
        typer.Option(
            help="Checkpoint folder, base model folder, or models:/NAME@ALIAS (repeatable: "
            "each in OUT/<name>, one Ray session; NAME=REF names one)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output: predictions/<task>.json, metrics.json.")],
    annotations: Annotated[
        list[Path] | None, typer.Option(help="Annotation file or folder (repeatable).")
    ] = None,
    video_root: Annotated[
        Path | None, typer.Option(help="Folder the video paths are under.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Instead of annotations: a preprocessed dataset.")
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(help="With --annotations: dataset folder to create or reuse [OUT/inputs]."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate [default: test].")] = None,
    address: AddressOpt = None,
    config: Annotated[Path | None, typer.Option(help="YAML with an EvalConfig.")] = None,
    set_: SetOpt = None,
) -> None:
    """Batch inference on Ray Data, upstream metrics per task, logged to MLflow."""
    from crashchat.config import EvalConfig
    from crashchat.evaluation.runner import EvalInputs, ResourceError, run_evaluation

    overrides = list(set_ or []) + ([f"split={split}"] if split else [])
    overrides += [f"inputs={inputs.resolve()}"] if inputs else []
    cfg = load_config(config, EvalConfig, overrides)
    if data is None and not (annotations and video_root):
        fail("give --data PREPROCESSED, or --annotations PATH with --video-root DIR")
    try:
        named = evaluation_names(list(model))
    except ValueError as exc:
        fail(str(exc))
    results = []
    try:
        with contextlib.redirect_stdout(sys.stderr), _one_ray_session(address, len(named) > 1):
            for name, ref in named:
                dest = out if len(named) == 1 else out / name
                results.append(
                    run_evaluation(
                        cfg,
                        EvalInputs(ref, dest, list(annotations or []), video_root, data),
                        resolve_address(address),
                    )
                )
                _print_metrics(results[-1], name if len(named) > 1 else None)
    except (FileNotFoundError, ValueError, ResourceError) as exc:
        fail(str(exc))
    summaries = [r.summary() for r in results]
    print(json.dumps(summaries[0] if len(summaries) == 1 else {"evaluations": summaries}, indent=2))


@contextlib.contextmanager
def _one_ray_session(address: str | None, shared: bool) -> Iterator[None]:
    """Several evaluations share one Ray (started once, when this command starts it)."""
    from crashchat.ray_utils import ensure_ray

    started = ensure_ray(resolve_address(address)) if shared else False
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _print_metrics(result: Any, name: str | None) -> None:
    """One evaluation's metrics as a table on stderr."""
    table = Table("task", "N", "metrics", title=name)
    for task, suite in result.metrics.items():
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in suite.items()
            if k not in ("N", "TP", "TN", "FP", "FN") and v is not None
        )
        table.add_row(task, str(suite["N"]), shown)
    console.print(table)


def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment holding the runs.")],
    out: Annotated[Path, typer.Option(help="Folder for comparison.md/.csv/.png.")] = Path(
        "runs/comparison"
    ),
    reference: Annotated[
        str | None, typer.Option(help="'paper': show the published figures beside ours.")
    ] = None,
) -> None:
    """Strategy comparison table from MLflow, with deltas and the best checkpoint per task."""
    from crashchat.evaluation.compare import run_compare, to_markdown

    if reference not in (None, "paper"):
        fail(f"unknown reference {reference!r}; the only one is 'paper'")
    try:
        comp, files, run_id = run_compare(experiment, out, reference == "paper")
    except FileNotFoundError as exc:
        fail(str(exc))
    sys.stderr.write(to_markdown(comp))  # unwrapped: a Markdown table must keep its lines
    print(
        json.dumps(
            {"files": [str(f) for f in files], "best": comp.best, "mlflow_run_id": run_id}, indent=2
        )
    )


def learning_bar_cmd(
    eval_dirs: Annotated[
        list[Path],
        typer.Argument(help="Evaluation output folders (one per fine-tuned checkpoint)."),
    ],
) -> None:
    """Check evaluations against the learning bar (majority rate, prior interval); exit 1 if missed.

    With several folders each check takes the best of them and names the one that gave it: a
    recognition-only checkpoint is not expected to localise, nor a localisation one to recognise.
    """
    from crashchat.evaluation.reference import best_checks, learning_bar

    per_dir = {}
    for eval_dir in eval_dirs:
        try:
            summary = json.loads((eval_dir / "evaluation.json").read_text())
        except FileNotFoundError:
            fail(f"{eval_dir} has no evaluation.json (run crashchat evaluate first)")
        per_dir[str(eval_dir)] = (
            learning_bar(summary["metrics"], summary.get("reference", {})),
            summary.get("reference", {}),
        )
    checks = best_checks({d: c for d, (c, _) in per_dir.items()})
    if not checks:
        fail("no recognition or crash-localization results with reference points to check")
    table = Table("check", "value", "needed", "result", "from")
    for c in checks:
        verdict = "[green]pass" if c["passed"] else "[red]FAIL"
        table.add_row(
            c["check"], f"{c['value']:.3f}", f"{c['threshold']:.3f}", verdict, c["eval_dir"]
        )
    console.print(table)
    reference = next(iter(per_dir.values()))[1]
    print(json.dumps({"reference": reference, "checks": checks}, indent=2))
    if not all(c["passed"] for c in checks):
        raise typer.Exit(1)


def metrics(
    task: Annotated[str, typer.Option(help="Task key of the predictions.")],
    predictions: Annotated[
        Path, typer.Option(help="Prediction file (JSON list, upstream format).")
    ],
    crash_localization_gt: Annotated[
        Path | None,
        typer.Option(help="Crash-localization predictions or annotations (t_acc for pre-crash)."),
    ] = None,
    bertscore_model: Annotated[
        Path | None, typer.Option(help="Local BERTScore model folder (text tasks).")
    ] = None,
    parse: Annotated[
        str, typer.Option(help="upstream (as the paper's scripts) or robust answer parsing.")
    ] = "upstream",
) -> None:
    """Compute a task's metrics from a prediction file alone; prints one JSON object."""
    from crashchat.data.tasks import get_task
    from crashchat.evaluation.metrics import crash_starts_from, task_metrics
    from crashchat.evaluation.predictions import PredictionFileError, load_predictions

    try:
        key = get_task(task).key
        records = load_predictions(key, predictions)
        starts = None
        if crash_localization_gt is not None:
            starts = crash_starts_from(json.loads(crash_localization_gt.read_text()))
        elif key == "pre_crash_localization":
            fail("pre_crash_localization needs --crash-localization-gt (t_acc per clip)")
    except (KeyError, PredictionFileError, FileNotFoundError, json.JSONDecodeError) as exc:
        fail(str(exc).strip("'\""))
    if parse not in ("upstream", "robust"):
        fail(f"--parse {parse!r}: choose upstream or robust")
    bert = str(bertscore_model) if bertscore_model else None
    print(json.dumps(task_metrics(key, records, starts, bert, parse), indent=2))
