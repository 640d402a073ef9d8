"""The client is a distribution of its own: its wheel builds, carries every module and
`py.typed`, and requires httpx alone (the service's dependencies stay out)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

from tests.conftest import ROOT


def test_the_client_wheel_depends_on_httpx_alone(tmp_path: Path):
    uv = ROOT / ".uv" / "bin" / "uv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_PYTHON": "python3"}
    built = subprocess.run(
        [str(uv), "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT / "client")],
        capture_output=True,
        text=True,
        env=env,
        timeout=25,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("taskstream_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(metadata).decode())
    source = {
        p.relative_to(ROOT / "client").as_posix()
        for p in (ROOT / "client" / "taskstream_client").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {n for n in names if n.startswith("taskstream_client/")} == source
    assert "taskstream_client/py.typed" in names
    assert meta.get_all("Requires-Dist") == ["httpx>=0.27"]
    assert meta["Name"] == "taskstream-client"
