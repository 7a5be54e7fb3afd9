"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.upstream import ScriptedUpstream
from tierwise.cache.onnx_embedder import DEFAULT_DIR
from tierwise.training.embedder_export import ensure_export

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def onnx_embedder_export() -> Path:
    """The export the default config serves (cache.embedder onnx, var/onnx-embedder, read relative to
    the working directory, which for the tests is the repository). `make test` produces it first; a
    bare pytest run produces it here on first use (about fifteen seconds, with torch)."""
    return ensure_export(ROOT / DEFAULT_DIR)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (routerbench/, qqp/): $TIERWISE_SHARED_DATA, else <repo>/../shared/data."""
    configured = os.environ.get("TIERWISE_SHARED_DATA")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(
            f"shared data not found at {path}; set TIERWISE_SHARED_DATA to the folder holding routerbench/"
        )
    return path


@pytest.fixture(scope="session")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prompt-embedding disk cache (keyed by embedder and text) for the whole run, shared by the
    xdist workers, whose temporary folders share a parent: the RouterBench and GSM8K slices that many
    test files train on are embedded once per run instead of once per file (seven seconds a slice on
    two cores). Only training data goes here; tests of the cache itself keep their own folder."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-embeddings"


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    """A scripted upstream speaking the OpenAI and Anthropic protocols; a test module may override it."""
    async with ScriptedUpstream() as scripted:
        yield scripted
