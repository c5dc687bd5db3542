"""``crashchat pipeline`` (and ``jobs/pipeline.py``): preprocess -> train -> evaluate -> compare
-> serve as one run, usually one Ray job."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from crashchat.cli.common import AddressOpt, SetOpt, console, fail, load_config
from crashchat.ray_utils import leave_job_working_dir, resolve_address


def pipeline(
    annotations: Annotated[
        list[Path], typer.Option(help="Annotation file or folder (repeatable).")
    ],
    video_root: Annotated[Path, typer.Option(help="Folder the video paths are under.")],
    model: Annotated[Path, typer.Option(help="Base model folder.")],
    output: Annotated[
        Path,
        typer.Option(
            help="Folder for every stage: preprocessed/, checkpoints/, eval/, comparison/."
        ),
    ],
    config: Annotated[Path | None, typer.Option(help="YAML with a PipelineConfig.")] = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Preprocess, train, evaluate (checkpoints and baseline), compare and optionally serve.

    With a ``serve`` section the checkpoints stay deployed on the cluster's Serve afterwards.
    Exit 2 when a stage cannot run, 1 when a mixture failed to train.
    """
    from crashchat.config import ConfigError, PipelineConfig
    from crashchat.evaluation.runner import ResourceError as EvalResourceError
    from crashchat.pipeline import PipelineInputs, run_pipeline
    from crashchat.serving.lifecycle import ServeSetupError
    from crashchat.training.runner import ResourceError

    cfg = load_config(config, PipelineConfig, set_)
    inputs = PipelineInputs.resolved(list(annotations), video_root, model, output)
    leave_job_working_dir(inputs.output)  # inside a Ray job only
    stdout = sys.stdout

    def report(stage: dict[str, Any]) -> None:
        # A JSON line per stage on stdout, flushed: a job's logs show each stage as it ends.
        print(json.dumps(stage), file=stdout, flush=True)

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Ray's notices stay off stdout
            results = run_pipeline(
                cfg,
                inputs,
                resolve_address(address),
                report,
                lambda msg: console.print(escape(msg), highlight=False, soft_wrap=True),
            )
    except KeyError as exc:  # str() of a KeyError quotes its message
        fail(str(exc).strip("'\""))
    except (ValueError, ConfigError, FileNotFoundError, ResourceError, EvalResourceError) as exc:
        fail(str(exc))
    except ServeSetupError as exc:
        fail(str(exc))
    failed = [r.mixture for r in results if r.error]
    if failed:
        fail(f"training failed for {', '.join(failed)}", code=1)
    print(json.dumps({"output": str(inputs.output), "mixtures": [r.mixture for r in results]}))
