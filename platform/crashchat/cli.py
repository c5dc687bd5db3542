"""The ``crashchat`` command line. Thin: parse arguments, call the library, report."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="CrashChat Platform: train, evaluate and serve CrashChat on Ray.",
)
data_app = typer.Typer(no_args_is_help=True, help="Annotation files and synthetic data.")
model_app = typer.Typer(no_args_is_help=True, help="Models: the tiny VideoLLaMA3 kit.")
checkpoint_app = typer.Typer(
    no_args_is_help=True, help="Fine-tuned checkpoints: verify, import upstream weights."
)
tracking_app = typer.Typer(no_args_is_help=True, help="MLflow tracking.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(checkpoint_app, name="checkpoint")
serve_app = typer.Typer(no_args_is_help=True, help="Ray Serve endpoint: up, down, config.")
app.add_typer(tracking_app, name="tracking")
app.add_typer(serve_app, name="serve")
cluster_app = typer.Typer(no_args_is_help=True, help="A multi-node Ray cluster on this machine.")
app.add_typer(cluster_app, name="cluster")

console = Console(stderr=True)

if TYPE_CHECKING:
    from crashchat.config import ServeConfig
    from crashchat.serving.catalog import Catalog


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


M = TypeVar("M", bound=BaseModel)


def _load_config(path: Path | None, model: type[M], overrides: list[str] | None) -> M:
    """The config from ``path`` (or defaults) with ``key=value`` overrides; exit 2 naming the problem."""
    from crashchat.config import ConfigError, build_config

    try:
        return build_config(path, model, overrides)
    except ConfigError as exc:
        _fail(str(exc))


@data_app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="Annotation files or folders of them.")],
    video_root: Annotated[
        Path | None,
        typer.Option(help="Check that every referenced video exists under this folder."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Validate annotation files; exit 0 only when every file is valid."""
    from crashchat.data.validation import validate_paths

    report, _ = validate_paths(list(paths), video_root=video_root)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        table = Table(title="Records per task")
        table.add_column("task")
        table.add_column("records", justify="right")
        for task, n in report.to_json()["per_task"].items():
            table.add_row(task, str(n))
        Console().print(table)
        for issue in report.errors[:200]:
            console.print(f"[red]✗[/red] {issue}", highlight=False, soft_wrap=True)
        if len(report.errors) > 200:
            console.print(f"... {len(report.errors) - 200} more problems (use --json for all)")
        status = (
            "[green]valid[/green]"
            if report.valid
            else f"[red]{len(report.errors)} problem(s)[/red]"
        )
        console.print(f"{report.files} file(s), {report.records} record(s): {status}")
    raise typer.Exit(0 if report.valid else 1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (videos/ and annotation files).")],
    videos: Annotated[int | None, typer.Option(help="Number of clips.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with a SynthConfig.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
    ] = None,
) -> None:
    """Generate synthetic crash clips (mp4) and CrashChat-format annotations."""
    from crashchat.config import SynthConfig
    from crashchat.data.synth import generate_dataset

    overrides = list(set_ or [])
    if videos is not None:
        overrides.append(f"videos={videos}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    cfg = _load_config(config, SynthConfig, overrides)
    start = time.perf_counter()
    with Progress(
        TextColumn("synthesising"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("clips", total=cfg.videos)
        result = generate_dataset(out, cfg, on_clip=lambda _s: bar.advance(task))
    summary = result.summary() | {"seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(summary, indent=2))


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option(help="Output directory (a Hugging Face model folder).")],
    config: Annotated[Path | None, typer.Option(help="YAML with a TinyModelConfig.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
    ] = None,
    text: Annotated[
        list[Path] | None,
        typer.Option(help="Extra annotation files whose text trains the tokenizer."),
    ] = None,
) -> None:
    """Build a random tiny VideoLLaMA3 with an offline-trained tokenizer and the real processors."""
    from crashchat.config import TinyModelConfig
    from crashchat.data.synth.labels import all_label_text
    from crashchat.data.validation import load_annotations
    from crashchat.models.tiny import build_tiny_model

    cfg = _load_config(config, TinyModelConfig, set_)
    texts = all_label_text()
    if text:
        for f in load_annotations(list(text)):
            texts += [t for s in f.samples for t in (s.prompt, s.answer)]
    path = build_tiny_model(out, cfg, texts)
    meta = json.loads((path / "crashchat_model.json").read_text())
    print(
        json.dumps(
            {"out": str(path), "parameters": meta["parameters"], "frame_size": cfg.frame_size},
            indent=2,
        )
    )


@app.command("preprocess")
def preprocess(
    annotations: Annotated[
        list[Path], typer.Option(help="Annotation file or folder (repeatable).")
    ],
    video_root: Annotated[
        Path, typer.Option(help="Folder the annotations' video paths are relative to.")
    ],
    model: Annotated[
        str, typer.Option(help="Model directory (or hub id) whose processor prepares inputs.")
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder: samples/, manifest.json, failures.jsonl.")
    ],
    fps: Annotated[
        float | None, typer.Option(help="Frames sampled per second [default: 10].")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option(help="Frame cap per clip [default: 96].")
    ] = None,
    address: Annotated[
        str, typer.Option(help="'local' starts Ray here; 'auto' or HOST:PORT joins a cluster.")
    ] = "local",
    strict: Annotated[
        bool, typer.Option(help="Exit non-zero when any clip or record failed.")
    ] = False,
    config: Annotated[Path | None, typer.Option(help="YAML with a PreprocessConfig.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
    ] = None,
) -> None:
    """Decode and preprocess videos with Ray Data into training-ready Parquet samples."""
    from crashchat.config import PreprocessConfig
    from crashchat.video.pipeline import run_preprocess

    overrides = list(set_ or [])
    overrides += [f"fps={fps}"] if fps is not None else []
    overrides += [f"max_frames={max_frames}"] if max_frames is not None else []
    overrides += ["strict=true"] if strict else []
    cfg = _load_config(config, PreprocessConfig, overrides)
    result = run_with_progress(
        lambda cb: run_preprocess(list(annotations), video_root, model, out, cfg, address, cb)
    )
    report_preprocess(result, cfg.strict)


def run_with_progress(job):  # type: ignore[no-untyped-def]
    """Run ``job(progress_callback)`` under a rich progress bar: clips done, failed, clips/s."""
    start = time.perf_counter()
    columns = (
        TextColumn("clips"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]:.2f} clips/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("clips", total=None, failed=0, rate=0.0)

        def update(done: int, failed: int, total: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-6)
            bar.update(task, completed=done, total=total, failed=failed, rate=rate)

        # Ray prints worker notices to stdout; keep stdout for the result JSON alone.
        with contextlib.redirect_stdout(sys.stderr):
            return job(update)


def report_preprocess(result, strict: bool) -> None:  # type: ignore[no-untyped-def]
    """Print the summary and failures; exit non-zero in strict mode when anything failed."""
    print(json.dumps(result.summary(), indent=2))
    for f in result.failures[:50]:
        console.print(
            f"[yellow]failed[/yellow] {f.get('video') or f.get('file')} [{f['stage']}]: {f['reason']}",
            highlight=False,
        )
    if len(result.failures) > 50:
        console.print(f"... {len(result.failures) - 50} more in {result.out / 'failures.jsonl'}")
    if strict and result.failures:
        _fail(
            f"{len(result.failures)} failure(s) in strict mode (see {result.out / 'failures.jsonl'})",
            code=1,
        )


@app.command("train")
def train(
    data: Annotated[Path, typer.Option(help="Preprocessed dataset (crashchat preprocess --out).")],
    model: Annotated[str, typer.Option(help="Base model directory or hub id (native layout).")],
    output: Annotated[Path, typer.Option(help="Checkpoints land in OUTPUT/<mixture>/.")],
    config: Annotated[Path | None, typer.Option(help="YAML with a TrainConfig.")] = None,
    mixture: Annotated[
        str | None,
        typer.Option(
            help="One mixture: a task key, linguistic_centric, perception_centric or heterogeneous."
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="monotask | homogeneous | heterogeneous | all [default: all]."),
    ] = None,
    address: Annotated[
        str, typer.Option(help="'local' starts Ray here; 'auto' or HOST:PORT joins a cluster.")
    ] = "local",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
    ] = None,
) -> None:
    """LoRA fine-tuning with Ray Train + DeepSpeed; one MLflow run and checkpoint per mixture."""
    from crashchat.config import TrainConfig
    from crashchat.training.runner import ResourceError, plan_mixtures, run_training

    cfg = _load_config(config, TrainConfig, set_)
    try:
        mixtures = plan_mixtures(mixture, strategy)
    except (KeyError, ValueError) as exc:
        _fail(str(exc).strip("'\""))
    if not (data / "manifest.json").is_file():
        _fail(f"{data} is not a preprocessed dataset (no manifest.json); run crashchat preprocess")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            results, note = run_training(
                cfg,
                data,
                model,
                output,
                mixtures,
                address,
                on_event=lambda msg: console.print(msg, highlight=False),
            )
    except ResourceError as exc:
        _fail(str(exc))
    report_training(results, note)


def report_training(results, note) -> None:  # type: ignore[no-untyped-def]
    """Print one line per mixture (run id, checkpoint) and a JSON summary; exit 1 on failures."""
    table = Table("mixture", "steps", "best eval loss", "MLflow run", "checkpoint")
    for r in results:
        loss = f"{r.best_eval_loss:.4f}" if r.best_eval_loss is not None else "-"
        table.add_row(
            r.mixture, str(r.steps), loss, r.run_id or "-", r.checkpoint or f"[red]{r.error}"
        )
    console.print(table)
    if note:
        console.print(f"[yellow]tracking:[/yellow] {note}", highlight=False)
    print(json.dumps({"results": [r.to_json() for r in results], "tracking": note}, indent=2))
    failed = [r.mixture for r in results if r.error]
    if failed:
        _fail(f"training failed for {', '.join(failed)}", code=1)


@checkpoint_app.command("verify")
def checkpoint_verify(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
) -> None:
    """Check every file of a checkpoint against its manifest (exit 1 naming the bad file)."""
    from crashchat.models.checkpoint import CheckpointError, verify_checkpoint

    try:
        meta = verify_checkpoint(path)
    except CheckpointError as exc:
        _fail(str(exc), code=1)
    print(json.dumps({"ok": True, "path": str(path), **meta}, indent=2))


@checkpoint_app.command("export")
def checkpoint_export(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the merged standalone model.")],
) -> None:
    """Merge a checkpoint into its base and write a standalone native model folder."""
    from crashchat.models.checkpoint import CheckpointError, export_merged

    try:
        info = export_merged(path, out)
    except CheckpointError as exc:
        _fail(str(exc), code=1)
    print(json.dumps(info, indent=2))


@checkpoint_app.command("import-base")
def checkpoint_import_base(
    src: Annotated[Path, typer.Option(help="Upstream VideoLLaMA3 folder (custom-code layout).")],
    out: Annotated[Path, typer.Option(help="Native VideoLlama3ForConditionalGeneration folder.")],
) -> None:
    """Convert upstream VideoLLaMA3 weights to transformers' native layout, shard by shard."""
    from crashchat.models.upstream import UpstreamFormatError, import_base

    try:
        print(json.dumps(import_base(src, out), indent=2))
    except (UpstreamFormatError, OSError) as exc:
        _fail(str(exc))


@checkpoint_app.command("import")
def checkpoint_import(
    lora: Annotated[Path, typer.Option(help="Published PEFT adapter folder.")],
    out: Annotated[Path, typer.Option(help="Platform checkpoint folder to write.")],
    base_model: Annotated[str, typer.Option(help="Native base model it applies to.")],
    non_lora_trainables: Annotated[
        Path | None, typer.Option(help="non_lora_trainables.bin (projector weights).")
    ] = None,
    mixture: Annotated[str | None, typer.Option(help="Mixture it was trained on.")] = None,
) -> None:
    """Convert a published CrashChat checkpoint (LoRA + projector pickle) to the platform format."""
    from crashchat.data.tasks import get_mixture
    from crashchat.models.upstream import UpstreamFormatError, import_checkpoint

    tasks = list(get_mixture(mixture).tasks) if mixture else None
    try:
        info = import_checkpoint(lora, non_lora_trainables, out, base_model, tasks, mixture)
    except (UpstreamFormatError, OSError) as exc:
        _fail(str(exc))
    print(json.dumps(info, indent=2))


@tracking_app.command("sync")
def tracking_sync(
    path: Annotated[Path, typer.Argument(help="tracking_pending.json, or the training output.")],
    uri: Annotated[str | None, typer.Option(help="Send to this tracking URI instead.")] = None,
) -> None:
    """Send tracking operations kept while MLflow was unreachable."""
    from crashchat.tracking import sync_pending

    try:
        tracker = sync_pending(path, uri)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if tracker.ops:
        _fail(f"{len(tracker.ops)} operations still unsent: {tracker.last_error}", code=1)
    print(json.dumps({"synced": True, "runs": tracker.run_ids}, indent=2))


@app.command("evaluate")
def evaluate(
    model: Annotated[
        str, typer.Option(help="Checkpoint folder, base model folder, or models:/NAME@ALIAS.")
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
    split: Annotated[str | None, typer.Option(help="Split to evaluate [default: test].")] = None,
    address: Annotated[
        str, typer.Option(help="'local' starts Ray here; 'auto' or HOST:PORT joins a cluster.")
    ] = "local",
    config: Annotated[Path | None, typer.Option(help="YAML with an EvalConfig.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
    ] = None,
) -> None:
    """Batch inference on Ray Data, upstream metrics per task, logged to MLflow."""
    from crashchat.config import EvalConfig
    from crashchat.evaluation.runner import ResourceError, run_evaluation

    overrides = list(set_ or []) + ([f"split={split}"] if split else [])
    cfg = _load_config(config, EvalConfig, overrides)
    if data is None and not (annotations and video_root):
        _fail("give --data PREPROCESSED, or --annotations PATH with --video-root DIR")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = run_evaluation(
                model, out, cfg, list(annotations or []), video_root, data, address
            )
    except (FileNotFoundError, ValueError, ResourceError) as exc:
        _fail(str(exc))
    table = Table("task", "N", "metrics")
    for task, suite in result.metrics.items():
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in suite.items()
            if k not in ("N", "TP", "TN", "FP", "FN") and v is not None
        )
        table.add_row(task, str(suite["N"]), shown)
    console.print(table)
    print(json.dumps(result.summary(), indent=2))


@app.command("compare")
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
        _fail(f"unknown reference {reference!r}; the only one is 'paper'")
    try:
        comp, files, run_id = run_compare(experiment, out, reference == "paper")
    except FileNotFoundError as exc:
        _fail(str(exc))
    sys.stderr.write(to_markdown(comp))  # unwrapped: a Markdown table must keep its lines
    print(
        json.dumps(
            {"files": [str(f) for f in files], "best": comp.best, "mlflow_run_id": run_id}, indent=2
        )
    )


@app.command("learning-bar")
def learning_bar_cmd(
    eval_dir: Annotated[Path, typer.Argument(help="An evaluation output folder.")],
) -> None:
    """Check an evaluation against the learning bar (majority rate, prior interval); exit 1 if missed."""
    from crashchat.evaluation.reference import learning_bar

    try:
        summary = json.loads((eval_dir / "evaluation.json").read_text())
    except FileNotFoundError:
        _fail(f"{eval_dir} has no evaluation.json (run crashchat evaluate first)")
    checks = learning_bar(summary["metrics"], summary.get("reference", {}))
    if not checks:
        _fail("no recognition or crash-localization results with reference points to check")
    table = Table("check", "value", "needed", "result")
    for c in checks:
        verdict = "[green]pass" if c["passed"] else "[red]FAIL"
        table.add_row(c["check"], f"{c['value']:.3f}", f"{c['threshold']:.3f}", verdict)
    console.print(table)
    print(json.dumps({"reference": summary.get("reference", {}), "checks": checks}, indent=2))
    if not all(c["passed"] for c in checks):
        raise typer.Exit(1)


@app.command("metrics")
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
            _fail("pre_crash_localization needs --crash-localization-gt (t_acc per clip)")
    except (KeyError, PredictionFileError, FileNotFoundError, json.JSONDecodeError) as exc:
        _fail(str(exc).strip("'\""))
    bert = str(bertscore_model) if bertscore_model else None
    print(json.dumps(task_metrics(key, records, starts, bert), indent=2))


def _serve_catalog(
    checkpoints: Path | None,
    registry: str | None,
    base_model: Path | None,
    tracking_uri: str | None,
    download_root: Path,
    prompts: str | None,
    best: Path | None = None,
) -> tuple[Catalog, dict[str, object]]:
    from crashchat.serving.catalog import build_catalog_from_dir, build_catalog_from_registry

    if (checkpoints is None) == (registry is None):
        _fail("give exactly one of --checkpoints DIR or --registry EXPERIMENT")
    base = str(base_model.resolve()) if base_model else None
    try:
        if checkpoints is not None:
            source: dict[str, object] = {"checkpoints": str(checkpoints.resolve())}
            catalog = build_catalog_from_dir(checkpoints, base, best, prompts=prompts)
        else:
            source = {"registry": registry}
            if tracking_uri:
                source["tracking_uri"] = tracking_uri
            catalog = build_catalog_from_registry(
                str(registry), download_root, tracking_uri, base, prompts=prompts
            )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if base:
        source["base_model"] = base
    return catalog, source


def _serve_config(
    config: Path | None,
    set_: list[str] | None,
    host: str | None,
    port: int | None,
    max_upload_mb: float | None,
    allowed_root: list[Path] | None,
    mode: str | None,
) -> ServeConfig:
    from crashchat.config import ServeConfig

    overrides = list(set_ or [])
    if host:
        overrides.append(f"host={host}")
    if port:
        overrides.append(f"port={port}")
    if mode:
        overrides.append(f"mode={mode}")
    if max_upload_mb:
        overrides.append(f"limits.max_upload_mb={max_upload_mb}")
    cfg = _load_config(config, ServeConfig, overrides)
    if allowed_root:
        cfg.limits.allowed_roots = [str(p.resolve()) for p in allowed_root]
    return cfg


CheckpointsOpt = Annotated[
    Path | None, typer.Option(help="Folder of platform checkpoints (crashchat train --output).")
]
RegistryOpt = Annotated[
    str | None, typer.Option(help="MLflow experiment whose registered aliases are served.")
]
BaseOpt = Annotated[
    Path | None,
    typer.Option(help="Base model served as 'baseline' [default: the checkpoints' base]."),
]
ServeConfigOpt = Annotated[Path | None, typer.Option(help="YAML with a ServeConfig.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
]
HostOpt = Annotated[str | None, typer.Option(help="Bind address [default: 127.0.0.1].")]
PortOpt = Annotated[int | None, typer.Option(help="HTTP port [default: 8000].")]
UploadOpt = Annotated[float | None, typer.Option(help="Largest upload, MiB.")]
RootOpt = Annotated[
    list[Path] | None, typer.Option(help="Folder JSON requests may read videos from (repeatable).")
]
BestOpt = Annotated[
    Path | None,
    typer.Option(help="best_checkpoints.json from crashchat compare (routes 'auto').", exists=True),
]
ModeOpt = Annotated[str | None, typer.Option(help="replicas (default) or multiplexed.")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI for --registry.")]
DownloadOpt = Annotated[Path, typer.Option(help="Where registry checkpoints are downloaded.")]


@serve_app.command("up")
def serve_up_cmd(
    checkpoints: CheckpointsOpt = None,
    registry: RegistryOpt = None,
    base_model: BaseOpt = None,
    best: BestOpt = None,
    config: ServeConfigOpt = None,
    set_: SetOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    max_upload_mb: UploadOpt = None,
    allowed_root: RootOpt = None,
    mode: ModeOpt = None,
    tracking_uri: TrackingOpt = None,
    download_root: DownloadOpt = Path("runs/serve/models"),
    address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster instead of starting one.")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of a Ray started here.")] = None,
    detach: Annotated[bool, typer.Option(help="Leave it running; stop with serve down.")] = False,
    state_file: Annotated[Path, typer.Option(help="Record of a detached endpoint.")] = Path(
        "runs/serve/serve-state.json"
    ),
) -> None:
    """Deploy every checkpoint as an autoscaled replica group behind one HTTP router."""
    import signal

    from crashchat.serving.lifecycle import ServeSetupError, serve_down, serve_up, wait_forever

    cfg = _serve_config(config, set_, host, port, max_upload_mb, allowed_root, mode)
    catalog, _source = _serve_catalog(
        checkpoints, registry, base_model, tracking_uri, download_root, cfg.prompts, best
    )
    stopping: list[int] = []

    def _stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    try:
        with contextlib.redirect_stdout(sys.stderr):
            state = serve_up(catalog, cfg, address, detach, num_cpus, state_file)
    except ServeSetupError as exc:
        _fail(str(exc))
    info = {
        "url": state.url,
        "docs": state.url + "docs",
        "checkpoints": catalog.names,
        "mode": cfg.mode,
        "ingress": cfg.ingress,
        "ray_address": state.address,
        "detached": detach,
    }
    print(json.dumps(info), flush=True)
    if detach:
        return
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    console.print(f"serving on {state.url} (Ctrl-C stops it)")
    wait_forever(lambda: bool(stopping))
    with contextlib.redirect_stdout(sys.stderr):
        serve_down(state)
    console.print("stopped")


@serve_app.command("batch")
def serve_batch_cmd(
    videos: Annotated[
        list[Path] | None, typer.Argument(help="Video files or folders of them.")
    ] = None,
    url: Annotated[str, typer.Option(help="The endpoint.")] = "http://127.0.0.1:8000/",
    annotations: Annotated[
        Path | None, typer.Option(help="Instead of videos: the clips these annotations name.")
    ] = None,
    video_root: Annotated[
        Path | None, typer.Option(help="Folder the annotations' video paths are under.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the annotations to send.")] = "test",
    tasks: Annotated[str, typer.Option(help="Comma-separated task keys, or 'all'.")] = "all",
    checkpoint: Annotated[str, typer.Option(help="A checkpoint name, or 'auto'.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write every result line here (JSONL).")] = None,
    token_env: Annotated[
        str, typer.Option(help="Environment variable holding the bearer token.")
    ] = "CRASHCHAT_SERVE_TOKEN",
) -> None:
    """Send videos in bulk to /v1/batch; print a crash report per clip and a summary."""
    import os

    from crashchat.serving.client import batch_items, send_batch, videos_from, videos_of_split

    if annotations is not None:
        clips = videos_of_split(annotations, video_root or annotations, split)
    else:
        clips = videos_from(list(videos or []))
    if not clips:
        _fail("no videos to send (give video files/folders, or --annotations with clips)")
    table = Table("clip", "crash", "interval (s)", "pre-crash cue (s)", "description")
    lines = []
    try:
        for line in send_batch(
            url, batch_items(clips, tasks, checkpoint), os.environ.get(token_env)
        ):
            lines.append(line)
            if "result" in line:
                rep = line["result"]["report"]
                iv = rep.get("crash_interval_s")
                table.add_row(
                    str(line["id"]),
                    str(rep.get("crash", "")),
                    f"{iv[0]:.1f} - {iv[1]:.1f}" if iv else "",
                    str(rep.get("pre_crash_cue_s", "") or ""),
                    str(rep.get("description", "") or "")[:60],
                )
            elif "error" in line:
                table.add_row(
                    str(line["id"]),
                    f"[red]error {line['error']['status']}",
                    "",
                    "",
                    line["error"]["detail"][:60],
                )
    except (RuntimeError, OSError) as exc:
        _fail(str(exc))
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = lines[-1].get("summary", {}) if lines else {}
    print(json.dumps({"url": url, "page": url, **summary, "out": str(out) if out else None}))
    if summary.get("failed"):
        raise typer.Exit(1)


@serve_app.command("down")
def serve_down_cmd(
    state_file: Annotated[Path, typer.Option(help="Record of a detached endpoint.")] = Path(
        "runs/serve/serve-state.json"
    ),
) -> None:
    """Stop a detached endpoint (and the Ray head serve up started for it)."""
    from crashchat.serving.lifecycle import ServeSetupError, serve_down

    try:
        with contextlib.redirect_stdout(sys.stderr):
            state = serve_down(state_file=state_file)
    except ServeSetupError as exc:
        _fail(str(exc))
    print(json.dumps({"stopped": state.url}))


@serve_app.command("config")
def serve_config_cmd(
    out: Annotated[Path, typer.Option(help="Serve config file to write (serve/<name>.yaml).")],
    checkpoints: CheckpointsOpt = None,
    registry: RegistryOpt = None,
    base_model: BaseOpt = None,
    best: BestOpt = None,
    config: ServeConfigOpt = None,
    set_: SetOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    max_upload_mb: UploadOpt = None,
    allowed_root: RootOpt = None,
    mode: ModeOpt = None,
    tracking_uri: TrackingOpt = None,
    download_root: DownloadOpt = Path("runs/serve/models"),
) -> None:
    """Write the Serve config file equivalent to serve up (for serve deploy / RayService)."""
    from crashchat.serving.lifecycle import build_serve_config, write_serve_config

    cfg = _serve_config(config, set_, host, port, max_upload_mb, allowed_root, mode)
    catalog, source = _serve_catalog(
        checkpoints, registry, base_model, tracking_uri, download_root, cfg.prompts, best
    )
    written = write_serve_config(build_serve_config(catalog, cfg, source), out)
    info: dict[str, Any] = {"written": str(written), "checkpoints": catalog.names}
    if cfg.ray_env():
        # A Serve config file cannot carry these: the cluster's processes must start with them.
        info["cluster_env"] = cfg.ray_env()
    print(json.dumps(info))


@cluster_app.command("up")
def cluster_up_cmd(
    config: Annotated[Path, typer.Option(help="YAML with a LocalClusterConfig.")] = Path(
        "cluster/local/cluster.yaml"
    ),
    state_file: Annotated[Path, typer.Option(help="Record of the cluster.")] = Path(
        "runs/cluster/cluster-state.json"
    ),
) -> None:
    """Start a head plus worker nodes (ray start) on this machine; prints the addresses."""
    from crashchat.config import LocalClusterConfig
    from crashchat.local_cluster import ClusterError, start_local_cluster

    cfg = _load_config(config, LocalClusterConfig, None)
    if state_file.exists():
        _fail(f"{state_file}: a cluster is already recorded; run crashchat cluster down first")
    try:
        state = start_local_cluster(cfg, state_file)
    except ClusterError as exc:
        _fail(str(exc))
    print(
        json.dumps(
            {"address": state.address, "dashboard": state.dashboard_url, "nodes": state.nodes}
        )
    )


@cluster_app.command("down")
def cluster_down_cmd(
    state_file: Annotated[Path, typer.Option(help="Record of the cluster.")] = Path(
        "runs/cluster/cluster-state.json"
    ),
) -> None:
    """Stop the cluster crashchat cluster up started (only its processes)."""
    from crashchat.local_cluster import ClusterError, stop_local_cluster

    try:
        state = stop_local_cluster(state_file)
    except ClusterError as exc:
        _fail(str(exc))
    print(json.dumps({"stopped": state.address}))


@app.command(
    "submit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def submit_cmd(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="preprocess | train | evaluate | serve | pipeline")],
    address: Annotated[
        str, typer.Option(help="Jobs API of the cluster, e.g. http://HEAD:8265.")
    ] = "http://127.0.0.1:8265",
    ship: Annotated[
        bool, typer.Option(help="Ship the project (working_dir + crashchat); off for images.")
    ] = True,
    env: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the job's environment (repeatable).")
    ] = None,
    follow_logs: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Stream logs and exit with the status.")
    ] = True,
    timeout: Annotated[float | None, typer.Option(help="Stop the job after this many s.")] = None,
) -> None:
    """Submit jobs/<job>.py to a Ray cluster; every other option goes to the job (--config ...)."""
    from crashchat.local_cluster import enable_token_auth
    from crashchat.submission import SubmissionError, exit_code, follow, submit_job

    enable_token_auth()
    extra = dict(e.split("=", 1) for e in env or [] if "=" in e)
    try:
        client, job_id = submit_job(address, job, list(ctx.args), ship, extra)
    except (SubmissionError, KeyError) as exc:
        _fail(str(exc).strip("'\""))
    console.print(f"submitted {job_id} to {address}")
    if not follow_logs:
        print(json.dumps({"job_id": job_id, "address": address}))
        return
    status = follow(client, job_id, sys.stderr.write, timeout)
    print(json.dumps({"job_id": job_id, "address": address, "status": status}))
    raise typer.Exit(exit_code(status))


@app.command("version")
def version() -> None:
    """Print the platform version."""
    from crashchat import __version__

    print(__version__)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
