"""``crashchat cluster``: a multi-node Ray cluster on this machine (head, CPU-decode, GPU stand-in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crashchat.cli.common import fail, load_config

app = typer.Typer(no_args_is_help=True, help="A multi-node Ray cluster on this machine.")


@app.command("up")
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

    cfg = load_config(config, LocalClusterConfig, None)
    if state_file.exists():
        fail(f"{state_file}: a cluster is already recorded; run crashchat cluster down first")
    try:
        state = start_local_cluster(cfg, state_file)
    except ClusterError as exc:
        fail(str(exc))
    print(
        json.dumps(
            {"address": state.address, "dashboard": state.dashboard_url, "nodes": state.nodes}
        )
    )


@app.command("down")
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
        fail(str(exc))
    print(json.dumps({"stopped": state.address}))
