"""A model version's manifest: what the model predicts, what it reads, and its files' digests.

``manifest.json`` sits in the version directory next to the model files. The
loader trusts nothing in that directory that the manifest does not vouch for:
every file listed is checked against its SHA-256 before it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierwise.classifier.features import FeatureSpec
from tierwise.classifier.neighbours import NeighbourSpec
from tierwise.classifier.unfamiliarity import UnfamiliaritySpec

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
ONNX_FILE = "model.onnx"
ONNX_OUTPUT = "p_adequate"
ONNX_INPUT = "features"


class ManifestError(ValueError):
    """A manifest is missing, unreadable or malformed; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class UtilityCalibration:
    """Quality target -> lambda of the utility rule, measured on the validation split.

    ``targets`` ascend; ``lambdas`` (USD^-1, the price of one dollar in probability)
    are the largest lambda whose validation adequacy reached each target, so they descend.
    """

    targets: tuple[float, ...]
    lambdas: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.lambdas) or not self.targets:
            raise ValueError("utility calibration needs as many lambdas as targets, and at least one")
        if any(b < a for a, b in zip(self.targets, self.targets[1:], strict=False)):
            raise ValueError("utility calibration targets must ascend")
        if any(value < 0 for value in self.lambdas):
            raise ValueError("utility calibration lambdas must not be negative")

    def lambda_for(self, target: float) -> float:
        """Lambda for ``target``: linear between calibrated targets, clamped at the ends."""
        targets, lambdas = self.targets, self.lambdas
        if target <= targets[0]:
            return lambdas[0]
        if target >= targets[-1]:
            return lambdas[-1]
        for i in range(1, len(targets)):
            if target <= targets[i]:
                lo, hi = targets[i - 1], targets[i]
                share = 0.0 if hi == lo else (target - lo) / (hi - lo)
                return lambdas[i - 1] + share * (lambdas[i] - lambdas[i - 1])
        return lambdas[-1]

    def to_json(self) -> dict[str, list[float]]:
        return {"targets": list(self.targets), "lambdas": list(self.lambdas)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UtilityCalibration:
        return cls(tuple(float(t) for t in data["targets"]), tuple(float(x) for x in data["lambdas"]))


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    tiers: tuple[str, ...]  # the order of the ONNX output's columns
    feature_spec: FeatureSpec
    embedder_key: str
    data_hash: str
    files: Mapping[str, str]  # relative path -> SHA-256 hex
    created_at: str
    quality_bar: float = 0.5
    metrics: Mapping[str, Any] = field(default_factory=dict)
    calibration: UtilityCalibration | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    neighbours: NeighbourSpec | None = None  # None: the trees alone
    unfamiliarity: UnfamiliaritySpec | None = None  # None: the version cannot say when it is out of its depth

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "tiers": list(self.tiers),
            "feature_spec": self.feature_spec.to_json(),
            "embedder_key": self.embedder_key,
            "data_hash": self.data_hash,
            "files": dict(self.files),
            "created_at": self.created_at,
            "quality_bar": self.quality_bar,
            "metrics": dict(self.metrics),
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "training": dict(self.training),
            "neighbours": None if self.neighbours is None else self.neighbours.to_json(),
            "unfamiliarity": None if self.unfamiliarity is None else self.unfamiliarity.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "manifest") -> Manifest:
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise ManifestError(
                    f"{where}: format {data.get('format')!r}, this loader reads {MANIFEST_FORMAT}"
                )
            files = data["files"]
            if not isinstance(files, dict) or not files:
                raise ManifestError(f"{where}: 'files' must map file names to SHA-256 digests")
            calibration = data.get("calibration")
            neighbours = data.get("neighbours")
            if neighbours is not None and not isinstance(neighbours, dict):
                raise ManifestError(f"{where}: 'neighbours' must be an object or null")
            unfamiliarity = data.get("unfamiliarity")
            if unfamiliarity is not None and not isinstance(unfamiliarity, dict):
                raise ManifestError(f"{where}: 'unfamiliarity' must be an object or null")
            return cls(
                version=str(data["version"]),
                tiers=tuple(str(t) for t in data["tiers"]),
                feature_spec=FeatureSpec.from_json(data["feature_spec"]),
                embedder_key=str(data["embedder_key"]),
                data_hash=str(data["data_hash"]),
                files={str(k): str(v) for k, v in files.items()},
                created_at=str(data["created_at"]),
                quality_bar=float(data.get("quality_bar", 0.5)),
                metrics=dict(data.get("metrics") or {}),
                calibration=None if calibration is None else UtilityCalibration.from_json(calibration),
                training=dict(data.get("training") or {}),
                neighbours=None if neighbours is None else NeighbourSpec.from_json(neighbours),
                unfamiliarity=None if unfamiliarity is None else UnfamiliaritySpec.from_json(unfamiliarity),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the top level must be an object")
    return Manifest.from_json(data, str(path))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a torn one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_json_atomic(directory / MANIFEST_NAME, manifest.to_json())
