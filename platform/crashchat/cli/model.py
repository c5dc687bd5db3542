"""``crashchat model``: the tiny VideoLLaMA3 kit (build, install and pack the kept base)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crashchat.cli.common import SetOpt, fail, load_config

app = typer.Typer(no_args_is_help=True, help="Models: the tiny VideoLLaMA3 kit.")


@app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option(help="Output directory (a Hugging Face model folder).")],
    config: Annotated[Path | None, typer.Option(help="YAML with a TinyModelConfig.")] = None,
    set_: SetOpt = None,
    text: Annotated[
        list[Path] | None,
        typer.Option(help="Extra annotation files whose text trains the tokenizer."),
    ] = None,
) -> None:
    """Build a random tiny VideoLLaMA3 with an offline-trained tokenizer and the real processors."""
    from crashchat.config import TinyModelConfig
    from crashchat.data.synth.labels import all_label_text
    from crashchat.data.validation import load_annotations
    from crashchat.models.metadata import read_model_meta
    from crashchat.models.tiny import build_tiny_model

    cfg = load_config(config, TinyModelConfig, set_)
    texts = all_label_text()
    if text:
        for f in load_annotations(list(text)):
            texts += [t for s in f.samples for t in (s.prompt, s.answer)]
    path = build_tiny_model(out, cfg, texts)
    meta = read_model_meta(path)
    print(
        json.dumps(
            {"out": str(path), "parameters": meta["parameters"], "frame_size": cfg.frame_size},
            indent=2,
        )
    )


@app.command("base")
def model_base(
    out: Annotated[Path, typer.Option(help="Output directory (a Hugging Face model folder).")],
) -> None:
    """Copy the kept tiny pretrained base (the tiny model after perception pre-training)."""
    from crashchat.models.tiny_base import AssetError, install_tiny_base, verify_tiny_base

    try:
        manifest = verify_tiny_base()
        path = install_tiny_base(out)
    except AssetError as exc:
        fail(str(exc))
    shown = {k: manifest.get(k) for k in ("what", "seed", "eval_loss", "steps", "rebuild")}
    print(json.dumps({"out": str(path), **shown}, indent=2))


@app.command("pack-base")
def model_pack_base(
    model: Annotated[Path, typer.Option(help="Merged model folder (checkpoint export output).")],
    provenance: Annotated[
        Path | None, typer.Option(help="JSON with what made it (command, seed, eval loss).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Asset folder [the package's own].")] = None,
) -> None:
    """Write a merged tiny model as the kept tiny-base asset, with its manifest."""
    from crashchat.models.tiny_base import ASSET_DIR, AssetError, pack_tiny_base

    info = json.loads(provenance.read_text()) if provenance else {}
    try:
        manifest = pack_tiny_base(model, out or ASSET_DIR, info)
    except AssetError as exc:
        fail(str(exc))
    size = sum(f["bytes"] for n, f in manifest["files"].items() if n.endswith(".safetensors"))
    print(json.dumps({"out": str(out or ASSET_DIR), "weight_bytes": size}, indent=2))
