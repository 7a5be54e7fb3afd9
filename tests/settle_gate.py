"""A gate that parks a budget store's settle or release, so a test can cancel the request meanwhile.

``SettleGate`` patches the operation on the store class (every instance, the real server's too).
Once armed, the next call parks at its point: ``before`` the store runs it, or ``after`` the store
committed it and before the manager sees the result. Those are the two sides of the one await a
request makes in a settle or release (the manager's shielded store call); calls after the parked
one pass straight through, so a second settle of the same reservation reaches the store.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.harness import build_config, config_dict
from tests.redis_server import RedisServer
from tests.upstream import ScriptedUpstream
from tierwise.router.budgets.redis_store import RedisBudgetStore
from tierwise.router.budgets.sqlite_store import SqliteBudgetStore
from tierwise.router.config import Config

Operation = Literal["settle", "release"]
Point = Literal["before", "after"]
STORE_CLASSES = {"sqlite": SqliteBudgetStore, "redis": RedisBudgetStore}
# How many times each race runs, with fresh reservations (TIERWISE_RACE_REPEATS=200 for the soak).
REPEATS = int(os.environ.get("TIERWISE_RACE_REPEATS", "3"))


@pytest.fixture(params=["sqlite", "redis"])
def race_config(
    request: pytest.FixtureRequest,
    upstream: ScriptedUpstream,
    tmp_path: Path,
    redis_server_factory: Callable[[], RedisServer],
) -> Config:
    """The service's config with one roomy budget for acme, kept in SQLite or in a private Redis."""
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    if request.param == "redis":
        data["store"] = {"kind": "redis", "url": redis_server_factory().url, "path": str(tmp_path / "var")}
    data["budgets"] = [{"tenant": "acme", "window": "day", "usd": "1000"}]
    return build_config(data)


def gated_store(config: Config) -> str:
    """The budget store class a gate patches for ``config``."""
    return "redis" if config.store.kind == "redis" else "sqlite"


class SettleGate:
    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, store: str, operation: Operation, point: Point
    ) -> None:
        self.point = point
        self.parked = asyncio.Event()
        self._go = asyncio.Event()
        self._armed = False
        self._running = 0
        self.calls = 0
        store_class = STORE_CLASSES[store]
        original = getattr(store_class, operation)

        async def gated(instance: Any, *args: Any) -> Any:
            self.calls += 1
            self._running += 1
            park, self._armed = self._armed, False
            try:
                if park and point == "before":
                    await self._park()
                result = await original(instance, *args)
                if park and point == "after":
                    await self._park()
                return result
            finally:
                self._running -= 1

        monkeypatch.setattr(store_class, operation, gated)

    def arm(self) -> None:
        """Park the next call."""
        self.parked, self._go, self._armed = asyncio.Event(), asyncio.Event(), True

    def let_go(self) -> None:
        self._go.set()

    async def idle(self) -> None:
        """Wait until no gated call is under way (a shielded store call outlives its cancelled caller)."""
        while self._running:
            await asyncio.sleep(0.001)

    async def _park(self) -> None:
        self.parked.set()
        await self._go.wait()
