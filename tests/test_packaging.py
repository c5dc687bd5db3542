import importlib
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_stdlib_platform_is_not_shadowed() -> None:
    assert not (REPO / "platform" / "__init__.py").exists()
    mod = importlib.import_module("platform")
    assert mod is platform
    assert callable(platform.system) and platform.system()


def test_package_imports_from_source_root() -> None:
    import crashchat

    assert Path(crashchat.__file__).resolve().is_relative_to(REPO / "platform" / "crashchat")


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "crashchat"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "data" in out.stdout and "model" in out.stdout


def test_top_level_folders_have_readmes() -> None:
    for folder in ("jobs", "serve", "cluster"):
        text = (REPO / folder / "README.md").read_text()
        assert len(text.split()) > 20, folder
