"""The container's inputs that `make test` can check without an engine: the wheel that the
Dockerfile installs (`uv sync --no-editable` builds it), and the Dockerfile's and
compose.yaml's knobs that `make image` / `make compose-test` turn (docs/container.md). The
stack itself runs in `make compose-test` (container/compose-test.sh), which needs root and a
container engine and so is not part of the suite."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import yaml

from tests.conftest import ROOT


def test_the_wheel_builds_and_carries_every_file_of_app(tmp_path: Path):
    # The image installs the package as a wheel; an editable install (make run, the tests)
    # never builds one, so a broken wheel build showed only in `docker build`.
    uv = ROOT / ".uv" / "bin" / "uv"
    assert uv.exists(), "make lint creates .uv (uv pinned by requirements-uv.txt)"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_PYTHON": "python3"}
    built = subprocess.run(
        [str(uv), "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=25,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("taskstream-*.whl")
    packed = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("app/")}
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "app").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    # every file of the package, once: Lua scripts, static files, generated protobuf code
    assert packed == source
    assert any(n.endswith(".lua") for n in packed)


def test_dockerfile_installs_from_the_lock_on_an_overridable_base():
    text = (ROOT / "Dockerfile").read_text()
    assert not text.startswith("# syntax=")  # that frontend image would be pulled
    assert text.count("FROM ${BASE}") == 2
    assert "uv sync --locked --no-install-project" in text  # dependency layer before the code
    assert text.index("COPY pyproject.toml uv.lock ./") < text.index("COPY app ./app")
    # the workspace member's manifest, without which `uv sync --locked` cannot check the lock
    assert text.index("COPY client/pyproject.toml") < text.index("uv sync --locked --no-install")
    assert "UV_COMPILE_BYTECODE=1" in text
    assert 'CMD ["python", "-m", "app", "serve"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!app/" in ignored  # .venv, .git, data/ stay out of the context
    assert "!client/pyproject.toml" in ignored


def test_compose_images_and_ports_are_overridable_with_registry_defaults():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7}"
    command = services["redis"]["command"]
    # Debian's redis-server (the stand-in image) keeps protected mode on by default
    assert command[command.index("--protected-mode") + 1] == "no"
    assert command[command.index("--dir") + 1] == "/data"
    for name in ("taskstream", "taskstream-2", "executor"):
        assert services[name]["image"] == "${TASKSTREAM_IMAGE:-taskstream:latest}"
        assert services[name]["build"]["args"] == {"BASE": "${BASE_IMAGE:-python:3.11-slim}"}
    assert services["taskstream"]["ports"] == ["${TASKSTREAM_PORT:-8081}:8081"]
    assert services["taskstream-2"]["ports"] == ["${TASKSTREAM_2_PORT:-8082}:8081"]
