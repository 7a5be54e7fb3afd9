"""The wheel owns one import name, ``tierwise``, and works outside this source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("tierwise-*.whl")
    return built


def test_the_only_top_level_name_is_tierwise(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tierwise"}
    for data in (
        "tierwise/v1/tierwise.proto",
        "tierwise/cache/models/verifier/manifest.json",
        "tierwise/router/analytics/static/dashboard.html",
        "tierwise/training/routerbench_tiers.yaml",
        "tierwise/py.typed",
    ):
        assert data in names, data
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "tierwise = tierwise.training.cli.app:main" in text
    assert "replay = tierwise.training.replay_judge:build_replay_judge" in text


def test_the_unpacked_wheel_imports_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    # PYTHONPATH comes before the editable install's import hook, so these resolve to the wheel's files.
    code = (
        "import tierwise, tierwise.router.service, tierwise.v1.tierwise_pb2_grpc as g;"
        "print(tierwise.router.service.__file__); print(g.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    files = done.stdout.split()
    assert len(files) == 2 and all(f.startswith(str(tmp_path)) for f in files), done.stdout
