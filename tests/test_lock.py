"""constraints.txt pins what CI passed with, and the environment running the tests is that one.

A fresh machine installs whatever its ranges allow on the day; the lock keeps `make` and
`.ci/run` on the versions the suite last passed with until `make upgrade` refreshes them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {raw!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


# Extras `make` installs (the gpu extra needs a CUDA machine and is not in the lock).
LOCKED_EXTRAS = ("dev", "train", "analytics")


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = [*project["dependencies"], *(name for extra in LOCKED_EXTRAS for name in extras[extra])]
    # An extra may bring another (`tierwise[analytics]`): that is this project, not a pin.
    return [r for r in map(Requirement, names) if canonicalize_name(r.name) != "tierwise"]


def test_make_installs_every_locked_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r"-e '\.\[([a-z,]+)\]'", makefile.split("$(STAMP): pyproject.toml $(LOCK)\n", 1)[1])
    assert installed, "the venv recipe installs the project with its extras"
    assert set(installed.group(1).split(",")) == set(LOCKED_EXTRAS)


def test_every_declared_dependency_is_pinned_inside_its_range() -> None:
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt: run `make upgrade`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


def test_the_makefile_installs_with_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(
        r"^PIP_LOCKED := .*--constraint \$\(LOCK\) --build-constraint \$\(LOCK\)", makefile, re.M
    )
    recipe = makefile.split("$(STAMP): pyproject.toml $(LOCK)\n", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in recipe.splitlines() if "pip install" in line or "$(PIP_LOCKED)" in line]
    assert len(installs) >= 3, recipe
    for line in installs:
        assert "--constraint $(LOCK)" in line or "$(PIP_LOCKED)" in line, line


def test_the_running_environment_is_the_locked_one() -> None:
    """Holds in any venv `make` built; a hand-made environment is not what CI runs."""
    if not (Path(sys.prefix) / ".installed-stamp").exists():
        pytest.skip("not running in a venv built by `make` (no .installed-stamp)")
    drift = []
    for name, version in locked().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # a platform-specific pin (pip freeze lists what this machine needed)
        if Version(installed.public) != version:
            drift.append(f"{name}: installed {installed}, locked {version}")
    assert not drift, "the environment is not the locked one:\n" + "\n".join(drift)
