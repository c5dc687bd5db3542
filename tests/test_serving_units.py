"""Serving pieces that need no Ray: routing, request checks, config files, exposure rules."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import yaml

from crashchat.config import ConfigError, ServeConfig, load_config
from crashchat.local_cluster import head_processes
from crashchat.serving.catalog import (
    BASELINE,
    Catalog,
    CatalogError,
    RouteError,
    build_catalog_from_dir,
)
from crashchat.serving.lifecycle import (
    ServeSetupError,
    build_serve_config,
    check_exposure,
    write_serve_config,
)
from crashchat.serving.requests import (
    RequestError,
    check_media_type,
    check_path,
    limited_stream,
    parse_tasks,
)
from helpers import make_checkpoints

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir: Path, synth_dir: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    prompts = json.loads((synth_dir / "prompts.json").read_text())
    root = tmp_path_factory.mktemp("served")
    return make_checkpoints(
        tiny_model_dir, root, ["crash_recognition", "perception_centric", "heterogeneous"], prompts
    )


def test_auto_routes_to_the_most_specialised_checkpoint(checkpoints: Path, synth_dir: Path) -> None:
    catalog = build_catalog_from_dir(checkpoints, prompts=synth_dir / "prompts.json")
    assert set(catalog.names) == {
        "crash_recognition",
        "perception_centric",
        "heterogeneous",
        BASELINE,
    }
    assert catalog.route("crash_recognition").name == "crash_recognition"  # monotask first
    assert catalog.route("crash_localization").name == "perception_centric"  # then the group
    assert catalog.route("causal_reasoning").name == "heterogeneous"  # then all-task
    # The baseline answers all six tasks with the prompts file's prompts.
    assert set(catalog.checkpoints[BASELINE].tasks) == set(catalog.tasks)
    assert len(catalog.tasks) == 6
    assert catalog.route("causal_reasoning", BASELINE).name == BASELINE
    with pytest.raises(RouteError, match="does not answer task 'causal_reasoning'"):
        catalog.route("causal_reasoning", "crash_recognition")
    with pytest.raises(RouteError, match=r"unknown checkpoint 'nope'.*served checkpoints"):
        catalog.route("crash_recognition", "nope")
    with pytest.raises(RouteError, match="unknown task 'bogus'; known tasks"):
        catalog.resolve_tasks(["bogus"])
    assert catalog.resolve_tasks("all") == catalog.tasks
    # The upstream file-name spelling of a task is accepted.
    assert catalog.resolve_tasks(["cause_reasoning"]) == ["causal_reasoning"]


def test_best_evaluated_checkpoint_wins_auto(checkpoints: Path, tmp_path: Path) -> None:
    best = tmp_path / "best_checkpoints.json"
    best.write_text(
        json.dumps(
            {
                "crash_recognition": {
                    "mixture": "heterogeneous",
                    "checkpoint": str(checkpoints / "heterogeneous"),
                },
                "crash_localization": {"mixture": "gone", "checkpoint": "/nowhere/gone"},
            }
        )
    )
    catalog = build_catalog_from_dir(checkpoints, best_file=best)
    assert catalog.route("crash_recognition").name == "heterogeneous"
    # A best checkpoint that is not deployed falls back to strategy order.
    assert catalog.route("crash_localization").name == "perception_centric"
    assert catalog.to_json()["auto"]["crash_recognition"] == "heterogeneous"
    again = Catalog.from_args(json.loads(json.dumps(catalog.to_args())))
    assert again.to_json() == catalog.to_json()


def test_catalog_errors_name_the_folder(tmp_path: Path, checkpoints: Path) -> None:
    with pytest.raises(CatalogError, match="no platform checkpoint"):
        build_catalog_from_dir(tmp_path)
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(checkpoints / "crash_recognition", damaged / "crash_recognition")
    (damaged / "crash_recognition" / "prompts.json").write_text("{}")
    with pytest.raises(CatalogError, match=r"prompts\.json"):
        build_catalog_from_dir(damaged)


def test_path_checks(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    clip = root / "a.mp4"
    clip.write_bytes(b"x")
    outside = tmp_path / "b.mp4"
    outside.write_bytes(b"x")
    (root / "link.mp4").symlink_to(outside)
    assert check_path(str(clip), [str(root)]) == str(clip.resolve())
    cases = {
        str(root / ".." / "b.mp4"): (403, "'..'"),
        str(outside): (403, "outside the allowed roots"),
        str(root / "link.mp4"): (403, "outside the allowed roots"),  # symlinks resolved first
        str(root / "missing.mp4"): (404, "does not exist"),
    }
    for raw, (status, text) in cases.items():
        with pytest.raises(RequestError) as err:
            check_path(raw, [str(root)])
        assert err.value.status == status and text in err.value.detail, raw
    with pytest.raises(RequestError) as err:
        check_path(str(clip), [])
    assert err.value.status == 403 and "no --allowed-root" in err.value.detail
    with pytest.raises(RequestError) as err:
        check_path(None, [str(root)])
    assert err.value.status == 422 and "video_path" in err.value.detail


def test_media_types_and_tasks() -> None:
    check_media_type("video/mp4", "a.mp4")
    check_media_type("application/octet-stream", "a.mkv")
    for ctype, name in [("text/plain", "a.txt"), ("image/png", "a.png"), (None, "notes")]:
        with pytest.raises(RequestError) as err:
            check_media_type(ctype, name)
        assert err.value.status == 415 and name in err.value.detail
    assert parse_tasks(None) == "all"
    assert parse_tasks("crash_recognition, crash_localization") == [
        "crash_recognition",
        "crash_localization",
    ]
    with pytest.raises(RequestError) as err:
        parse_tasks(3)
    assert err.value.status == 422 and "tasks" in err.value.detail


def test_upload_limit_stops_reading_early() -> None:
    consumed: list[int] = []

    async def source():  # type: ignore[no-untyped-def]
        for i in range(100):
            consumed.append(i)
            yield b"x" * 1024

    async def drain(declared: str | None) -> int:
        n = 0
        async for chunk in limited_stream(source(), 10 * 1024, declared):
            n += len(chunk)
        return n

    with pytest.raises(RequestError) as err:
        asyncio.run(drain(None))
    assert err.value.status == 413
    assert len(consumed) == 11  # stopped at the first chunk over the limit, not at the end
    consumed.clear()
    with pytest.raises(RequestError) as err:
        asyncio.run(drain(str(50 * 1024)))
    assert err.value.status == 413 and consumed == []  # Content-Length refused before reading


def test_exposure_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRASHCHAT_SERVE_TOKEN", raising=False)
    check_exposure(ServeConfig())  # loopback: fine
    with pytest.raises(ServeSetupError, match="CRASHCHAT_SERVE_TOKEN"):
        check_exposure(ServeConfig(host="0.0.0.0"))
    monkeypatch.setenv("CRASHCHAT_SERVE_TOKEN", "s3cret")
    check_exposure(ServeConfig(host="0.0.0.0"))


def test_serve_config_validation_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("model:\n  autoscaling:\n    min_replicas: 3\n    max_replicas: 1\n")
    with pytest.raises(ConfigError, match=r"model\.autoscaling"):
        load_config(bad, ServeConfig)
    bad.write_text("mode: sideways\n")
    with pytest.raises(ConfigError, match="mode"):
        load_config(bad, ServeConfig)


def test_generated_serve_config_passes_rays_schema(checkpoints: Path, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    cfg = load_config(REPO / "jobs/configs/serve-tiny.yaml", ServeConfig)
    catalog = build_catalog_from_dir(checkpoints)
    out = write_serve_config(
        build_serve_config(catalog, cfg, {"checkpoints": str(checkpoints)}), tmp_path / "s.yaml"
    )
    data = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "crashchat.serving.app:build_app"
    names = {d["name"] for d in data["applications"][0]["deployments"]}
    assert names == {"router", "decoder"} | {f"model_{n}" for n in catalog.names}
    model = next(
        d for d in data["applications"][0]["deployments"] if d["name"] == "model_heterogeneous"
    )
    assert model["autoscaling_config"]["max_replicas"] == cfg.model.autoscaling.max_replicas
    assert model["max_queued_requests"] == cfg.model.max_queued_requests
    # The args rebuild the same config.
    assert ServeConfig.model_validate(app.args["config"]) == cfg


def test_head_processes_only_match_their_port() -> None:
    # No Ray cluster listens on port 1 here: nothing must match (and our own process never does).
    assert head_processes("127.0.0.1:1") == []
    assert os.getpid() not in head_processes("127.0.0.1:1")
