"""Every YAML file in the repository parses into its typed config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from crashchat.config import (
    ConfigError,
    PreprocessConfig,
    SynthConfig,
    TinyModelConfig,
    apply_overrides,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]

# Each YAML the repo ships and the config model it must validate against. A new YAML that is not
# listed here fails test_every_yaml_is_registered.
CONFIGS: dict[str, type[BaseModel]] = {
    "jobs/configs/synth-demo.yaml": SynthConfig,
    "jobs/configs/tiny-model.yaml": TinyModelConfig,
    "jobs/configs/preprocess.yaml": PreprocessConfig,
    "jobs/configs/preprocess-tiny.yaml": PreprocessConfig,
}
SKIP_DIRS = {".venv", ".git", "runs", ".cache", "node_modules"}


def _repo_yaml() -> set[str]:
    found = set()
    for p in REPO.rglob("*.y*ml"):
        rel = p.relative_to(REPO)
        if not SKIP_DIRS & set(rel.parts) and p.suffix in (".yaml", ".yml"):
            found.add(rel.as_posix())
    return found


def test_every_yaml_is_registered() -> None:
    assert _repo_yaml() == set(CONFIGS)


@pytest.mark.parametrize("rel", sorted(CONFIGS))
def test_yaml_validates(rel: str) -> None:
    cfg = load_config(REPO / rel, CONFIGS[rel])
    assert isinstance(cfg, CONFIGS[rel])


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("fps: 10\nlimits:\n  max_widht: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, PreprocessConfig)
    assert str(bad) in str(err.value) and "limits.max_widht" in str(err.value)


def test_overrides_apply_nested_values() -> None:
    data = apply_overrides(
        {"limits": {"max_width": 10}}, ["limits.max_height=20", "fps=5", "strict=true"]
    )
    cfg = PreprocessConfig.model_validate(data)
    assert (cfg.limits.max_width, cfg.limits.max_height, cfg.fps, cfg.strict) == (10, 20, 5.0, True)
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["novalue"])


def test_preprocess_job_rejects_a_bad_override_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "preprocess.py"),
            "--annotations",
            str(tmp_path),
            "--video-root",
            str(tmp_path),
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "fps=-1",
            "--address",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "--set overrides" in out.stderr and "fps" in out.stderr
