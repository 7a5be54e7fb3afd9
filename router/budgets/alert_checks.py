"""Budget alerts, checked off the request path: each check is a background task, and each mark
(unit, kind, level) fires once per budget period: the store remembers which were set, so one
replica's alert is not repeated by another."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from tierwise.router.budgets.alerts import (
    ALERT_UNITS,
    AlertDispatcher,
    AlertKind,
    BudgetAlert,
    Unit,
    alert_limit,
    spent_in,
)
from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.store import Amount, BudgetLine, BudgetStore, Period
from tierwise.router.config import BudgetConfig

log = logging.getLogger("tierwise.budgets")


class AlertChecks:
    def __init__(
        self,
        budgets: Mapping[str, BudgetConfig],
        store: BudgetStore,
        dispatcher: AlertDispatcher,
        wall_clock: Callable[[], datetime],
        period_of: Callable[[BudgetLine], Period],
    ) -> None:
        self._budgets = budgets
        self._store = store
        self._dispatcher = dispatcher
        self._wall_clock = wall_clock
        self._period_of = period_of
        self._fired: dict[str, tuple[str, set[str]]] = {}  # budget -> (period, marks known to be set)
        self._tasks: set[asyncio.Task[None]] = set()

    def thresholds(self, line: BudgetLine, used: Amount) -> None:
        """After a settle: the alert levels (shares of the limit) ``used`` has reached."""
        self._spawn(self._thresholds(line, used))

    def crossed(self, line: BudgetLine, kind: AlertKind, units: list[Unit], used: Amount) -> None:
        """A reservation passed a soft limit or was refused at a hard one."""
        self._spawn(self._crossed(line, kind, units, used))

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _thresholds(self, line: BudgetLine, used: Amount) -> None:
        budget = self._budgets[line.budget]
        for unit in ALERT_UNITS:
            limit = alert_limit(budget, unit, "threshold")
            if limit is not None:
                spent = spent_in(unit, used)
                levels = [level for level in budget.alerts if spent >= limit * Decimal(repr(level))]
                await self._fire(line, "threshold", unit, levels, used)

    async def _crossed(self, line: BudgetLine, kind: AlertKind, units: list[Unit], used: Amount) -> None:
        for unit in units:
            await self._fire(line, kind, unit, [None], used)

    async def _fire(
        self, line: BudgetLine, kind: AlertKind, unit: Unit, levels: Sequence[float | None], used: Amount
    ) -> None:
        marks = {f"{unit}:{kind}:{'' if level is None else f'{level:g}'}": level for level in levels}
        period, known = self._fired.get(line.budget, (line.period, set()))
        if period != line.period:
            known = set()
        self._fired[line.budget] = (line.period, known)
        wanted = [mark for mark in marks if mark not in known]
        if not wanted:
            return
        try:
            new = await self._store.mark_alerts(line, wanted, self._wall_clock().timestamp())
        except BudgetStoreUnavailable as exc:
            log.warning("budget alerts for %s not checked: %s", line.budget, exc.message)
            return
        known.update(wanted)
        budget = self._budgets[line.budget]
        for mark in new:
            alert = BudgetAlert(
                budget=budget.name,
                tenant=budget.tenant,
                feature=budget.feature,
                key=budget.key,
                period=line.period,
                kind=kind,
                unit=unit,
                level=marks[mark],
                used=spent_in(unit, used),
                limit=alert_limit(budget, unit, kind) or Decimal(0),
                resets_at=self._period_of(line).end,
            )
            self._dispatcher.dispatch(alert, budget.webhook_url)


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except Exception:
        log.exception("budget alert check failed")
