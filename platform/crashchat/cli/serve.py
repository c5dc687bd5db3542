"""``crashchat serve``: the Ray Serve endpoint.

``up`` starts (or joins) Ray and deploys, in the foreground or ``--detach``ed until ``down``;
``deploy`` (and ``jobs/serve.py``) puts the app on a running cluster and returns, leaving it up;
``config`` writes the equivalent Serve config file; ``batch`` sends clips to an endpoint. The
checkpoint source (a folder or the MLflow registry) is chosen by
:func:`crashchat.serving.catalog.build_catalog`, as Serve's own ``build_app`` chooses it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from crashchat.cli.common import SetOpt, console, fail, load_config
from crashchat.ray_utils import resolve_address

if TYPE_CHECKING:
    from crashchat.config import ServeConfig
    from crashchat.serving.catalog import Catalog

app = typer.Typer(no_args_is_help=True, help="Ray Serve endpoint: up, down, deploy, config.")


def _catalog(
    checkpoints: Path | None,
    registry: str | None,
    base_model: Path | None,
    best: Path | None,
    prompts: str | None,
    download_root: Path | None,
    tracking_uri: str | None,
) -> Catalog:
    """The catalog from the one source given; exit 2 naming what is wrong."""
    from crashchat.serving.catalog import build_catalog

    try:
        return build_catalog(
            checkpoints=checkpoints,
            registry=registry,
            base_model=base_model,
            best=best,
            prompts=prompts,
            download_root=download_root,
            tracking_uri=tracking_uri,
        )
    except (ValueError, FileNotFoundError) as exc:  # CatalogError is a ValueError
        fail(str(exc))


def _source_args(
    checkpoints: Path | None,
    registry: str | None,
    base_model: Path | None,
    best: Path | None,
    download_root: Path | None,
    tracking_uri: str | None,
) -> dict[str, object]:
    """How Serve's ``build_app`` finds the same catalog on the cluster (``serve config``)."""
    source: dict[str, object] = (
        {"checkpoints": str(checkpoints.resolve())} if checkpoints else {"registry": registry}
    )
    if registry and tracking_uri:
        source["tracking_uri"] = tracking_uri
    if registry and download_root:
        source["download_root"] = str(download_root.resolve())
    if base_model:
        source["base_model"] = str(base_model.resolve())
    if best:
        source["best"] = str(best.resolve())
    return source


def _serve_settings(
    config: Path | None,
    set_: list[str] | None,
    host: str | None,
    port: int | None,
    max_upload_mb: float | None,
    allowed_root: list[Path] | None,
    mode: str | None,
) -> ServeConfig:
    """The ServeConfig from ``--config`` and ``--set`` plus the shortcut options; exit 2 if bad."""
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
    cfg = load_config(config, ServeConfig, overrides)
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
DownloadOpt = Annotated[
    Path | None,
    typer.Option(
        help="Where registry checkpoints are downloaded. Default: crashchat-serve-models in the "
        "temporary folder (/tmp), the same for the CLI, jobs and Serve's build_app."
    ),
]


@app.command("up")
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
    download_root: DownloadOpt = None,
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
    from crashchat.serving.lifecycle import ServeSetupError, live_endpoint, serve_up

    running = live_endpoint(state_file) if detach else None
    if running is not None:
        fail(
            f"{state_file}: the endpoint it records is still running ({running.url}); stop it "
            f"with `crashchat serve down --state-file {state_file}` or give another --state-file"
        )
    cfg = _serve_settings(config, set_, host, port, max_upload_mb, allowed_root, mode)
    catalog = _catalog(
        checkpoints, registry, base_model, best, cfg.prompts, download_root, tracking_uri
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):
            state = serve_up(catalog, cfg, address, detach, num_cpus, state_file)
    except ServeSetupError as exc:
        fail(str(exc))
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
    if not detach:
        _serve_in_foreground(state, cfg.shutdown_timeout_s)


def _serve_in_foreground(state: Any, shutdown_timeout_s: float) -> None:
    """Wait for SIGINT/SIGTERM, then stop the endpoint within ``shutdown_timeout_s``."""
    import os
    import signal

    from crashchat.serving.lifecycle import stop_foreground, wait_forever

    stopping: list[int] = []

    def _stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    console.print(f"serving on {state.url} (Ctrl-C stops it)")
    wait_forever(lambda: bool(stopping))
    with contextlib.redirect_stdout(sys.stderr):
        outcome = stop_foreground(state, shutdown_timeout_s)
    if outcome == "killed":
        console.print("stopped (Ray had gone or stalled: its processes were killed)")
    elif outcome == "abandoned":
        console.print(
            f"[red]error:[/red] the cluster at {state.address} did not confirm the app's removal "
            f"within {shutdown_timeout_s:g} s; check with `serve status` and `serve delete`",
            soft_wrap=True,
        )
    if outcome != "stopped":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if outcome == "killed" else 1)  # Ray's exit hooks would wait on the dead cluster
    console.print("stopped")


@app.command("batch")
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

    from crashchat.serving.client import batch_items, send_batch

    clips, truth = _clips_to_send(videos, annotations, video_root, split)
    vs = " (answer / truth)" if truth else ""
    table = Table(
        "clip", f"crash{vs}", f"interval s{vs}", f"cue s{vs}", "answered by", "description"
    )
    lines, agree = [], Counter[str]()
    try:
        for line in send_batch(
            url, batch_items(clips, tasks, checkpoint), os.environ.get(token_env)
        ):
            lines.append(line)
            _add_row(table, line, truth, agree)
    except (RuntimeError, OSError) as exc:
        fail(str(exc))
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = lines[-1].get("summary", {}) if lines else {}
    if truth:
        summary["agreement"] = _agreement(agree)
        console.print(
            "agreement with the annotations: "
            + ", ".join(f"{k} {v}" for k, v in summary["agreement"].items())
        )
    print(json.dumps({"url": url, "page": url, **summary, "out": str(out) if out else None}))
    if summary.get("failed"):
        raise typer.Exit(1)


def _clips_to_send(
    videos: list[Path] | None, annotations: Path | None, video_root: Path | None, split: str
) -> tuple[list[Path], dict[str, dict]]:
    """The clips of a batch and, when they come from annotations, each one's true answers."""
    from crashchat.serving.client import truth_of_split, videos_from, videos_of_split

    if annotations is not None:
        clips = videos_of_split(annotations, video_root or annotations, split)
        truth = truth_of_split(annotations, split)
    else:
        clips, truth = videos_from(list(videos or [])), {}
    if not clips:
        fail("no videos to send (give video files/folders, or --annotations with clips)")
    return clips, truth


def _add_row(
    table: Table, line: dict[str, Any], truth: dict[str, dict], agree: Counter[str]
) -> None:
    """One clip's report row (or its error) from a ``/v1/batch`` line; counts agreement."""
    from crashchat.serving.client import report_row

    if "result" in line:
        row = report_row(line, truth.get(str(line["id"])))
        for field, ok in row["match"].items():
            agree[f"{field}_checked"] += 1
            agree[field] += ok
        table.add_row(
            str(row["id"]),
            row["crash"],
            row["crash_interval_s"],
            row["pre_crash_cue_s"],
            escape(row["answered_by"]),
            escape(row["description"][:50]),
        )
    elif "error" in line:
        error = line["error"]
        table.add_row(
            escape(str(line["id"])),
            f"[red]error {error['status']}",
            "",
            "",
            "",
            escape(str(error["detail"])[:50]),
        )


def _agreement(agree: Counter[str]) -> dict[str, str]:
    """Agreement with the annotations: crash yes/no, interval IoU >= 0.5, cue within 1 s."""
    return {
        f: f"{agree[f]}/{agree[f + '_checked']}"
        for f in ("crash", "crash_interval_s", "pre_crash_cue_s")
        if agree[f + "_checked"]
    }


@app.command("down")
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
        fail(str(exc))
    except ConnectionError as exc:  # a joined cluster that is gone
        fail(
            f"{state_file}: cannot reach the Ray cluster it records ({exc}); remove the file "
            "if that cluster no longer exists"
        )
    print(json.dumps({"stopped": state.url}))


@app.command("config")
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
    download_root: DownloadOpt = None,
) -> None:
    """Write the Serve config file equivalent to serve up (for serve deploy / RayService)."""
    from crashchat.serving.builder import build_serve_config, write_serve_config

    cfg = _serve_settings(config, set_, host, port, max_upload_mb, allowed_root, mode)
    catalog = _catalog(
        checkpoints, registry, base_model, best, cfg.prompts, download_root, tracking_uri
    )
    source = _source_args(checkpoints, registry, base_model, best, download_root, tracking_uri)
    written = write_serve_config(build_serve_config(catalog, cfg, source), out)
    info: dict[str, Any] = {"written": str(written), "checkpoints": catalog.names}
    if cfg.ray_env():
        # A Serve config file cannot carry these: the cluster's processes must start with them.
        info["cluster_env"] = cfg.ray_env()
    print(json.dumps(info))


@app.command("deploy")
def serve_deploy_cmd(
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
    download_root: DownloadOpt = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to deploy on. Default: the cluster of the Ray job (or RAY_ADDRESS), "
            "else 'auto' (one started on this machine with ray start)."
        ),
    ] = None,
) -> None:
    """Deploy the checkpoints on a running Ray cluster's Serve and return; they stay up.

    The command ``jobs/serve.py`` runs; stop the app with Ray's ``serve shutdown`` or redeploy.
    """
    from crashchat.ray_utils import ensure_ray
    from crashchat.serving.lifecycle import ServeSetupError, deploy
    from crashchat.serving.requests import ExposureError, check_exposure

    if address == "local":
        fail(
            "serve deploy needs a running cluster (a Ray started here would die on exit); "
            "use `crashchat serve up` to serve from this machine"
        )
    cfg = _serve_settings(config, set_, host, port, max_upload_mb, allowed_root, mode)
    catalog = _catalog(
        checkpoints, registry, base_model, best, cfg.prompts, download_root, tracking_uri
    )
    try:
        check_exposure(cfg.host, cfg.token_env)  # the rule serve up and build_app apply
        with contextlib.redirect_stdout(sys.stderr):
            ensure_ray(resolve_address(address, fallback="auto"))
            url = deploy(catalog, cfg)
    except (ExposureError, ServeSetupError, ConnectionError) as exc:
        fail(str(exc))
    print(json.dumps({"url": url, "checkpoints": catalog.names}, indent=2))
