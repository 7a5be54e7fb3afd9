"""Running experiments' definitions, kept in the store directory so a restart cannot reshuffle units.

Changing an experiment's salt, unit, arms or weights moves units between arms:
the users already measured in one arm would be counted in another. So the first
start records each experiment's definition, and a later start with a different
one is refused unless the experiment says ``force: true`` (then the new
definition replaces the old, and the report should start after the change).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tierwise.router.config import ConfigError, ExperimentConfig

FILE_NAME = "experiments.json"


def definition(experiment: ExperimentConfig) -> dict[str, Any]:
    """What assignment depends on, and nothing else (arm policies may change freely)."""
    return {
        "salt": experiment.hash_salt,
        "unit": experiment.unit,
        "weights": {arm.name: arm.weight for arm in experiment.arms},
    }


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [f"{key} {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
    return "; ".join(changed)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"experiments: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"experiments: {path} is not a JSON object")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    # Readers see the old file or the new one: write aside, fsync, rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with aside.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(aside, path)


def check_and_record(store_dir: Path, experiments: tuple[ExperimentConfig, ...]) -> None:
    """Refuse a changed definition unless forced; record new (and forced) ones durably."""
    if not experiments:
        return
    path = store_dir / FILE_NAME
    stored = _read(path)
    updated = dict(stored)
    for index, experiment in enumerate(experiments):
        new = definition(experiment)
        old = stored.get(experiment.name)
        if isinstance(old, dict):
            old_definition = {key: old.get(key) for key in new}
            if old_definition == new:
                continue
            if not experiment.force:
                raise ConfigError(
                    f"experiments[{index}]: experiment {experiment.name!r} is running with another "
                    f"definition ({_describe_change(old_definition, new)}); changing it moves units between "
                    "arms. Set force: true to accept that, or start a new experiment under another name"
                )
        updated[experiment.name] = {**new, "since": time.time()}
    if updated != stored:
        _write(path, updated)


def recorded_since(store_dir: Path, name: str) -> float:
    """When the experiment's current definition was first recorded (0: never, count everything)."""
    entry = _read(store_dir / FILE_NAME).get(name)
    since = entry.get("since") if isinstance(entry, dict) else None
    return float(since) if isinstance(since, (int, float)) else 0.0
