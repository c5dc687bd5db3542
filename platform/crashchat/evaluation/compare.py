"""Strategy comparison from MLflow: a table per task metric, deltas, best values, paper figures.

Reads the runs of one experiment: training runs carry their evaluation metrics
(``<task>.<metric>``) and ``mixture``/``strategy`` tags; baseline evaluations are runs tagged
``strategy=baseline``. For each task the monotask column is the run trained on that task alone,
the homogeneous column the group run that contains it, heterogeneous the all-task run.

Each figure carries the answer parser that produced it (``upstream``, as the paper's evaluation,
or ``robust``), read from the run's ``parse`` tag or param; runs without one are ``upstream``, the
default. Paper figures are only shown next to ``upstream`` figures (or where we have none):
``robust`` figures are not comparable with them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crashchat.data.tasks import GROUPS, HETEROGENEOUS, TASK_KEYS

STRATEGY_COLUMNS = ("monotask", "homogeneous", "heterogeneous", "baseline")
SHORT = {"monotask": "Ind.", "homogeneous": "Homo.", "heterogeneous": "Hete.", "baseline": "Base"}
METRICS: dict[str, tuple[str, ...]] = {
    "crash_recognition": ("Accuracy", "Precision", "Recall", "F1"),
    "crash_description": ("BLEU", "ROUGE-L_F", "BERTScore_F1"),
    "causal_reasoning": ("BLEU", "ROUGE-L_F", "BERTScore_F1"),
    "prevention_reasoning": ("BLEU", "ROUGE-L_F", "BERTScore_F1"),
    "crash_localization": ("mIoU", "AP@30", "AP@50", "AP@70"),
    "pre_crash_localization": ("mIoU", "AP@30", "AP@50", "AP@70"),
}
# The metric that picks each task's best checkpoint (serving routes by it).
PRIMARY = {
    "crash_recognition": "F1",
    "crash_description": "ROUGE-L_F",
    "causal_reasoning": "ROUGE-L_F",
    "prevention_reasoning": "ROUGE-L_F",
    "crash_localization": "mIoU",
    "pre_crash_localization": "mIoU",
}
# Published CrashChat figures (test split), paper metric names mapped onto ours.
PAPER: dict[tuple[str, str], dict[str, float]] = {
    ("crash_recognition", "Recall"): {"monotask": 0.8839, "homogeneous": 0.9306, "heterogeneous": 0.9745, "baseline": 0.6732},
    ("crash_recognition", "Precision"): {"monotask": 0.9395, "homogeneous": 0.9621, "heterogeneous": 0.9850, "baseline": 0.7332},
    ("crash_recognition", "F1"): {"monotask": 0.9024, "homogeneous": 0.9433, "heterogeneous": 0.9793, "baseline": 0.5791},
    ("crash_description", "BLEU"): {"monotask": 0.4320, "homogeneous": 0.4421, "heterogeneous": 0.4608, "baseline": 0.0221},
    ("crash_description", "ROUGE-L_F"): {"monotask": 0.8175, "homogeneous": 0.8366, "heterogeneous": 0.8535, "baseline": 0.3805},
    ("crash_description", "BERTScore_F1"): {"monotask": 0.9736, "homogeneous": 0.9760, "heterogeneous": 0.9783, "baseline": 0.9099},
    ("causal_reasoning", "BLEU"): {"monotask": 0.2568, "homogeneous": 0.2729, "heterogeneous": 0.3158, "baseline": 0.1613},
    ("causal_reasoning", "ROUGE-L_F"): {"monotask": 0.5285, "homogeneous": 0.5304, "heterogeneous": 0.5683, "baseline": 0.3706},
    ("causal_reasoning", "BERTScore_F1"): {"monotask": 0.9244, "homogeneous": 0.9253, "heterogeneous": 0.9326, "baseline": 0.9056},
    ("prevention_reasoning", "BLEU"): {"monotask": 0.1882, "homogeneous": 0.1970, "heterogeneous": 0.2380, "baseline": 0.0030},
    ("prevention_reasoning", "ROUGE-L_F"): {"monotask": 0.5386, "homogeneous": 0.5568, "heterogeneous": 0.5559, "baseline": 0.3712},
    ("prevention_reasoning", "BERTScore_F1"): {"monotask": 0.9227, "homogeneous": 0.9268, "heterogeneous": 0.9249, "baseline": 0.8920},
    ("crash_localization", "mIoU"): {"monotask": 0.5344, "homogeneous": 0.5456, "heterogeneous": 0.4608, "baseline": 0.1636},
    ("crash_localization", "AP@30"): {"monotask": 0.7883, "homogeneous": 0.8003, "heterogeneous": 0.7031, "baseline": 0.1885},
    ("crash_localization", "AP@50"): {"monotask": 0.5749, "homogeneous": 0.5998, "heterogeneous": 0.4785, "baseline": 0.0602},
    ("crash_localization", "AP@70"): {"monotask": 0.3201, "homogeneous": 0.3348, "heterogeneous": 0.2229, "baseline": 0.0129},
    ("pre_crash_localization", "mIoU"): {"monotask": 0.4351, "homogeneous": 0.5018, "heterogeneous": 0.3148, "baseline": 0.2418},
    ("pre_crash_localization", "AP@30"): {"monotask": 0.5207, "homogeneous": 0.5886, "heterogeneous": 0.3726, "baseline": 0.2995},
    ("pre_crash_localization", "AP@50"): {"monotask": 0.4518, "homogeneous": 0.5293, "heterogeneous": 0.3305, "baseline": 0.2435},
    ("pre_crash_localization", "AP@70"): {"monotask": 0.3761, "homogeneous": 0.4355, "heterogeneous": 0.2668, "baseline": 0.1850},
}  # fmt: skip


# What a model that learned only the answer format scores (logged by each evaluation).
REFERENCE_POINTS = {
    ("crash_recognition", "Accuracy"): "reference.recognition_majority_rate",
    ("crash_localization", "mIoU"): "reference.localization_prior_mIoU",
}


def _reference_value(runs: dict[str, Any], key: str) -> float | None:
    values = [r.data.metrics[key] for r in runs.values() if key in r.data.metrics]
    return values[0] if values else None


def run_parser(run: Any) -> str:
    """The answer parser of a run's evaluation: its ``parse`` tag or param, else ``upstream``."""
    for source in (run.data.tags, run.data.params):
        value = source.get("parse")
        if value in ("upstream", "robust"):
            return str(value)
    return "upstream"


def _parser_summary(row: dict[str, Any]) -> str | None:
    """One parser for the row, or which strategy used which when they differ."""
    used = {s: row[f"parser_{s}"] for s in STRATEGY_COLUMNS if row[f"parser_{s}"]}
    if len(set(used.values())) == 1:
        return next(iter(used.values()))
    return ", ".join(f"{SHORT[s]} {p}" for s, p in used.items()) or None


def _mlflow_key(task: str, metric: str) -> str:
    return f"{task}.{metric.replace('@', '_at_')}"


def _group_of(task: str) -> str:
    return next(g for g, keys in GROUPS.items() if task in keys)


@dataclass
class Comparison:
    """The comparison table and the best checkpoint per task."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: bool = False


def collect_runs(client: Any, experiment: str) -> dict[str, Any]:
    """Latest finished run per mixture (``baseline`` for baseline evaluations)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise FileNotFoundError(f"MLflow has no experiment named {experiment!r}")
    runs: dict[str, Any] = {}
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]):
        tags = run.data.tags
        if not any(k.startswith(tuple(TASK_KEYS)) for k in run.data.metrics):
            continue  # not evaluated
        name = "baseline" if tags.get("strategy") == "baseline" else tags.get("mixture")
        if name and name not in runs:
            runs[name] = run
    return runs


def _source_run(runs: dict[str, Any], task: str, strategy: str) -> Any:
    name = {
        "monotask": task,
        "homogeneous": _group_of(task),
        "heterogeneous": HETEROGENEOUS,
        "baseline": "baseline",
    }[strategy]
    return runs.get(name)


def _strategy_cells(runs: dict[str, Any], task: str, metric: str) -> dict[str, Any]:
    """Each strategy's value and the parser that produced it (None without a value)."""
    cells: dict[str, Any] = {}
    for strategy in STRATEGY_COLUMNS:
        run = _source_run(runs, task, strategy)
        value = run.data.metrics.get(_mlflow_key(task, metric)) if run else None
        cells[strategy] = value
        cells[f"parser_{strategy}"] = run_parser(run) if value is not None else None
    return cells


def _paper_cells(row: dict[str, Any]) -> dict[str, Any]:
    """Paper figures, left out next to figures of the ``robust`` parser (not comparable)."""
    paper = PAPER.get((row["task"], row["metric"]), {})
    return {
        f"paper_{s}": value if row[f"parser_{s}"] != "robust" else None
        for s, value in paper.items()
    }


def _build_row(runs: dict[str, Any], task: str, metric: str, reference: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "metric": metric, **_strategy_cells(runs, task, metric)}
    row["parser"] = _parser_summary(row)
    ours = {s: row[s] for s in STRATEGY_COLUMNS[:3] if row[s] is not None}
    row["best"] = max(ours, key=lambda s: ours[s]) if ours else None
    for a, b in (("homogeneous", "monotask"), ("heterogeneous", "monotask"),
                 ("heterogeneous", "homogeneous")):  # fmt: skip
        delta = None
        if row[a] is not None and row[b] is not None:
            delta = row[a] - row[b]
        row[f"{SHORT[a]}-{SHORT[b]}"] = delta
    ref_key = REFERENCE_POINTS.get((task, metric))
    row["reference"] = _reference_value(runs, ref_key) if ref_key else None
    if reference:
        row.update(_paper_cells(row))
    return row


def _best_checkpoint(runs: dict[str, Any], task: str) -> dict[str, Any] | None:
    primary = PRIMARY[task]
    candidates = []
    for name, run in runs.items():
        value = run.data.metrics.get(_mlflow_key(task, primary))
        if name != "baseline" and value is not None:
            candidates.append((value, name, run))
    if not candidates:
        return None
    value, name, run = max(candidates, key=lambda c: c[0])
    return {
        "mixture": name,
        "strategy": run.data.tags.get("strategy"),
        "run_id": run.info.run_id,
        "checkpoint": run.data.tags.get("checkpoint"),
        "metric": primary,
        "value": value,
        "parser": run_parser(run),
    }


def build_comparison(runs: dict[str, Any], reference: bool = False) -> Comparison:
    """The comparison rows and the best checkpoint per task.

    Rows are ``{task, metric, parser, <strategy>: value, parser_<strategy>, deltas, best,
    reference}``; with ``reference`` also ``paper_<strategy>``, left empty next to ``robust``
    figures.
    """
    comp = Comparison(reference=reference)
    for task in TASK_KEYS:
        comp.rows += [_build_row(runs, task, metric, reference) for metric in METRICS[task]]
        best = _best_checkpoint(runs, task)
        if best:
            comp.best[task] = best
    return comp


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if isinstance(value, float) and value < 0 else f"{value:.4f}"


def to_markdown(comp: Comparison) -> str:
    """The table in Markdown, best of our three strategies in bold.

    "format-only ref." is what answering the majority class (recognition accuracy) or the mean
    training interval (crash-localization mIoU) scores: a model must beat it to show it looks at
    the video. "parser" says which answer parser produced the row's figures; the paper columns
    stay empty next to ``robust`` figures.
    """
    deltas = ["Homo.-Ind.", "Hete.-Ind.", "Hete.-Homo."]
    head = ["task", "metric", "parser", *[SHORT[s] for s in STRATEGY_COLUMNS]]
    head += ["format-only ref.", *deltas]
    if comp.reference:
        head += [f"paper {SHORT[s]}" for s in STRATEGY_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in comp.rows:
        cells = [row["task"], row["metric"], row.get("parser") or "-"]
        for s in STRATEGY_COLUMNS:
            text = _fmt(row[s])
            cells.append(f"**{text}**" if row["best"] == s else text)
        cells.append(_fmt(row.get("reference")))
        cells += [_fmt(row[d]) for d in deltas]
        if comp.reference:
            cells += [_fmt(row.get(f"paper_{s}")) for s in STRATEGY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.get(f"parser_{s}") == "robust" for row in comp.rows for s in STRATEGY_COLUMNS):
        lines += ["", "Figures of the robust parser are not comparable with the paper's."]
    return "\n".join(lines) + "\n"


def plot_panels(comp: Comparison, png: Path) -> None:
    """One small panel per task (its primary metric): a bar per strategy that has a figure, the
    format-only reference as a dashed line, the paper's figure as a marker over each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["task"]: r for r in comp.rows if r["metric"] == PRIMARY.get(r["task"])}
    rows = {t: r for t, r in rows.items() if any(r[s] is not None for s in STRATEGY_COLUMNS)}
    if not rows:
        rows = {r["task"]: r for r in comp.rows[:1]}
    cols = min(3, max(1, len(rows)))
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.6 * cols, 2.9 * lines), squeeze=False)
    colors = {
        "monotask": "#4c72b0",
        "homogeneous": "#55a868",
        "heterogeneous": "#c44e52",
        "baseline": "#8c8c8c",
    }
    robust_seen = False
    for ax, (task, row) in zip(axes.flat, rows.items(), strict=False):
        shown = [s for s in STRATEGY_COLUMNS if row[s] is not None]
        for x, strategy in enumerate(shown):
            bar = ax.bar(x, row[strategy], 0.6, color=colors[strategy])[0]
            if row[f"parser_{strategy}"] == "robust":
                bar.set_hatch("//")
                robust_seen = True
            ax.text(x, row[strategy] + 0.02, f"{row[strategy]:.2f}", ha="center", fontsize=7)
            paper = row.get(f"paper_{strategy}")
            if comp.reference and paper is not None:
                ax.plot(x, paper, marker="D", color="black", markersize=4, linestyle="none")
        if row.get("reference") is not None:
            ax.axhline(row["reference"], color="black", linestyle="--", linewidth=0.8)
        labels = [SHORT[s] if s != "baseline" else "base" for s in shown]
        ax.set_xticks(range(len(shown)), labels, fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{task.replace('_', ' ')}\n{row['metric']}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    notes = ["dashed: answer-format-only reference"]
    if comp.reference:
        notes.append("diamond: the paper's figure")
    if robust_seen:
        notes.append("hatched: robust parser (not comparable with the paper)")
    fig.suptitle("CrashChat strategies per task; " + "; ".join(notes), fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def write_outputs(comp: Comparison, out: str | Path) -> list[Path]:
    """``comparison.md``, ``comparison.csv``, ``comparison.png``, ``best_checkpoints.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, png, best = (
        out / "comparison.md",
        out / "comparison.csv",
        out / "comparison.png",
        out / "best_checkpoints.json",
    )
    md.write_text(to_markdown(comp))
    fields: list[str] = []
    for row in comp.rows:
        fields += [k for k in row if k not in fields]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields or ["task", "metric"], restval="")
        writer.writeheader()
        writer.writerows(comp.rows)
    plot_panels(comp, png)
    best.write_text(json.dumps(comp.best, indent=2))
    return [md, csv_path, png, best]


def run_compare(
    experiment: str, out: str | Path, reference: bool = False, tracking_uri: str | None = None
) -> tuple[Comparison, list[Path], str | None]:
    """Build the comparison from MLflow, write the files and log them in a comparison run."""
    import time

    from crashchat.tracking import Tracker, resolve_tracking_uri
    from crashchat.tracking.lineage import source_tags

    tracker = Tracker(resolve_tracking_uri(tracking_uri), retry_interval_s=0)
    runs = collect_runs(tracker.client, experiment)
    comp = build_comparison(runs, reference)
    compared = {name: run.info.run_id for name, run in sorted(runs.items())}
    files = write_outputs(comp, out)
    (Path(out) / "compared_runs.json").write_text(json.dumps(compared, indent=2) + "\n")
    key = f"compare-{int(time.time())}"
    tags = {"kind": "comparison", "compared_runs": ",".join(compared.values()), **source_tags()}
    tracker.create_run(key, experiment, "strategy-comparison", tags=tags)
    for dataset in _compared_datasets(runs):  # the comparison read what its runs read
        tracker.log_input(key, dataset)
    tracker.log_artifacts(key, Path(out), "comparison")
    tracker.end_run(key)
    tracker.flush(force=True)
    return comp, files, tracker.run_id(key)


def _compared_datasets(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation datasets of the compared runs, once each, as ``comparison`` inputs."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        for item in run.inputs.dataset_inputs:
            context = {t.key: t.value for t in item.tags}.get("mlflow.data.context")
            if context != "evaluation" or item.dataset.digest in seen:
                continue
            d = item.dataset
            seen[d.digest] = {
                "name": d.name, "digest": d.digest, "source_type": d.source_type,
                "source": d.source, "profile": d.profile, "context": "comparison", "tags": {},
            }  # fmt: skip
    return list(seen.values())
