"""serve/: the profiles and the demo's Serve config file are what Ray Serve and the app accept."""

from __future__ import annotations

from pathlib import Path

import yaml

from crashchat.config import ServeConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_serve_config_passes_rays_schema_and_builds_the_apps_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "demo.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "crashchat.serving.builder:build_app" and app.route_prefix == "/"
    args = app.args
    # The app's builder reads exactly these: the profile, its overrides, the checkpoint source.
    assert set(args) == {"config_path", "overrides", "checkpoints"}
    cfg = load_config(REPO / args["config_path"], ServeConfig, args["overrides"])
    assert cfg.prompts == "runs/demo/data/prompts.json"
    assert cfg.limits.allowed_roots == ["runs/demo/data"]
    assert cfg.host == raw["http_options"]["host"] == "127.0.0.1"
    # The demo writes its checkpoints where the file looks for them.
    assert f"$(DEMO_DIR)/{Path(args['checkpoints']).name}" in (REPO / "Makefile").read_text()
