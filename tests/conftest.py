"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.upstream import ScriptedUpstream


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


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    """A scripted upstream speaking the OpenAI and Anthropic protocols; a test module may override it."""
    async with ScriptedUpstream() as scripted:
        yield scripted
