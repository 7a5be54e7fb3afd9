"""Model versions on disk, the pointer to the serving one, and hot reload.

Layout of a registry directory::

    versions/<version>/manifest.json, model.onnx, ...
    serving.json        {"version": ..., "history": [previously served, oldest first]}

``serving.json`` is replaced atomically (write, fsync, rename), so a reader sees
the old pointer or the new one. Every replica watches it and swaps models
without dropping a request: a request holds the model object it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tierwise.classifier.manifest import Manifest, ManifestError, read_manifest, write_json_atomic
from tierwise.classifier.model import DEFAULT_EMBEDDER_KEY, ClassifierModel, ModelRefused, load_model

log = logging.getLogger(__name__)

POINTER_NAME = "serving.json"
VERSIONS_DIR = "versions"
GATE_TOLERANCE = 1e-9


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says why."""


class NoModelServing(RuntimeError):
    """No model version has been loaded yet."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    created_at: str
    serving: bool
    gate: dict[str, Any] | None
    error: str | None = None  # why the manifest could not be read


@dataclass(frozen=True, slots=True)
class Pointer:
    version: str
    history: tuple[str, ...]


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER_NAME

    def version_dir(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"not a version name: {version!r}")
        return self.versions_dir / version

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def pointer(self) -> Pointer | None:
        try:
            data = json.loads(self.pointer_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"cannot read {self.pointer_path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise RegistryError(f"{self.pointer_path}: expected an object with a 'version' string")
        history = data.get("history") or []
        return Pointer(data["version"], tuple(str(v) for v in history))

    def serving_version(self) -> str | None:
        pointer = self.pointer()
        return None if pointer is None else pointer.version

    def manifest(self, version: str) -> Manifest:
        directory = self.version_dir(version)
        if not directory.is_dir():
            raise RegistryError(f"no model version {version!r} in {self.versions_dir}")
        return read_manifest(directory)

    def list(self) -> list[VersionInfo]:
        serving = self.serving_version()
        infos = []
        for version in self.versions():
            try:
                manifest = self.manifest(version)
            except (ManifestError, RegistryError) as exc:
                infos.append(VersionInfo(version, "", version == serving, None, str(exc)))
                continue
            gate = manifest.metrics.get("gate")
            infos.append(
                VersionInfo(
                    version, manifest.created_at, version == serving, gate if isinstance(gate, dict) else None
                )
            )
        return infos

    def _write_pointer(self, pointer: Pointer) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.pointer_path,
            {
                "version": pointer.version,
                "history": list(pointer.history),
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    def _verify(
        self, version: str, expected_tiers: Sequence[str] | None, embedder_key: str
    ) -> ClassifierModel:
        return load_model(self.version_dir(version), expected_tiers, embedder_key, device="cpu")

    def promote(
        self,
        version: str,
        *,
        force: bool = False,
        expected_tiers: Sequence[str] | None = None,
        embedder_key: str = DEFAULT_EMBEDDER_KEY,
    ) -> Pointer:
        """Serve ``version``: only if it loads cleanly and its held-out gate metric is not worse.

        The gate compares ``metrics.gate`` of the two manifests (the same metric on the same
        data); where they cannot be compared, only ``force`` promotes.
        """
        self._verify(version, expected_tiers, embedder_key)
        current = self.pointer()
        if current is not None and current.version == version:
            return current
        if current is not None and not force:
            self._check_gate(self.manifest(version), current.version)
        history = () if current is None else (*current.history, current.version)
        pointer = Pointer(version, history)
        self._write_pointer(pointer)
        log.info("model version %s promoted (was %s)", version, None if current is None else current.version)
        return pointer

    def _check_gate(self, candidate: Manifest, serving_version: str) -> None:
        try:
            serving = self.manifest(serving_version)
        except (ManifestError, RegistryError):
            return  # the serving version is unreadable: anything verified beats it
        new, old = candidate.metrics.get("gate"), serving.metrics.get("gate")
        if not isinstance(new, dict) or not isinstance(old, dict):
            raise RegistryError(
                f"cannot compare {candidate.version!r} with the serving {serving_version!r}: "
                "a manifest has no held-out gate metric; use force to promote anyway"
            )
        comparable = new.get("name") == old.get("name") and candidate.data_hash == serving.data_hash
        if not comparable:
            raise RegistryError(
                f"cannot compare {candidate.version!r} ({new.get('name')} on data {candidate.data_hash[:12]}) "
                f"with the serving {serving_version!r} ({old.get('name')} on data {serving.data_hash[:12]}); "
                "use force to promote anyway"
            )
        if float(new["value"]) < float(old["value"]) - GATE_TOLERANCE:
            raise RegistryError(
                f"{candidate.version!r} scores {new['name']}={float(new['value']):.4f} on the held-out split, "
                f"below the serving {serving_version!r} ({float(old['value']):.4f}); use force to promote anyway"
            )

    def rollback(
        self, *, expected_tiers: Sequence[str] | None = None, embedder_key: str = DEFAULT_EMBEDDER_KEY
    ) -> Pointer:
        """Serve the previously served version again (it must still load cleanly)."""
        current = self.pointer()
        if current is None or not current.history:
            raise RegistryError("nothing to roll back to: no version was served before the current one")
        previous = current.history[-1]
        self._verify(previous, expected_tiers, embedder_key)
        pointer = Pointer(previous, current.history[:-1])
        self._write_pointer(pointer)
        log.info("model version %s rolled back to %s", current.version, previous)
        return pointer


@dataclass(frozen=True, slots=True)
class ReloadResult:
    version: str | None  # the version serving after the reload
    changed: bool
    error: str | None = None  # why the pointed-to version was refused (the previous one kept serving)


Loader = Callable[[Path], ClassifierModel]


class ServingModel:
    """The model requests predict with, swapped atomically on reload.

    Readers take ``model`` once per request and use that object to the end, so a
    swap never affects a request in flight; the old model is freed when the
    last such request lets go of it.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        expected_tiers: Sequence[str],
        embedder_key: str = DEFAULT_EMBEDDER_KEY,
        device: str = "auto",
        loader: Loader | None = None,
        require_unfamiliarity: bool = False,
    ) -> None:
        """``require_unfamiliarity``: refuse versions without an unfamiliarity calibration (the server
        acts on unfamiliar prompts)."""
        self.registry = registry
        self.expected_tiers = tuple(expected_tiers)
        self._loader: Loader = loader or (
            lambda path: load_model(
                path, self.expected_tiers, embedder_key, device, require_unfamiliarity=require_unfamiliarity
            )
        )
        self._model: ClassifierModel | None = None
        self._reload_lock = threading.Lock()
        # The pointer file's stamp as of the last reload: the watcher compares with this, not with
        # what it saw when it started, or a promote landing before its first poll would be missed.
        self._reloaded_stamp: tuple[int, int] | None = None
        self.last_error: str | None = None
        self.reloads = 0

    @property
    def model(self) -> ClassifierModel:
        model = self._model
        if model is None:
            raise NoModelServing(f"no model version is loaded from {self.registry.root}")
        return model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def swap(self, model: ClassifierModel) -> ClassifierModel | None:
        """Serve ``model`` from now on; return the one it replaces."""
        previous, self._model = self._model, model
        return previous

    def reload(self) -> ReloadResult:
        """Load the version the pointer names if it is not the one serving; keep the old one on refusal."""
        with self._reload_lock:
            self._reloaded_stamp = self._pointer_stamp()  # before reading: a later change is seen next poll
            current = self._model.version if self._model is not None else None
            try:
                wanted = self.registry.serving_version()
            except RegistryError as exc:
                return self._refused(current, str(exc))
            if wanted is None:
                return self._refused(current, f"no serving version in {self.registry.pointer_path}")
            if wanted == current:
                return ReloadResult(current, changed=False)
            try:
                model = self._loader(self.registry.version_dir(wanted))
            except (ModelRefused, RegistryError, OSError) as exc:
                return self._refused(current, str(exc))
            self.swap(model)
            self.last_error = None
            self.reloads += 1
            log.info("serving model version %s (was %s)", wanted, current)
            return ReloadResult(wanted, changed=True)

    def _refused(self, current: str | None, error: str) -> ReloadResult:
        self.last_error = error
        log.error("model reload refused, still serving %s: %s", current, error)
        return ReloadResult(current, changed=False, error=error)

    def _pointer_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.registry.pointer_path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_ino)

    async def watch(
        self,
        interval_s: float = 1.0,
        stop: asyncio.Event | None = None,
        on_reload: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        """Poll the pointer file and reload when it changes, until ``stop`` is set (or cancelled)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                break
            if self._pointer_stamp() == self._reloaded_stamp:
                continue
            result = await asyncio.to_thread(self.reload)
            if on_reload is not None:
                on_reload(result)
