"""The spend ledger as the durable record of what budgets used: what the budget manager rebuilds a
period's usage from when the shared budget store (Redis) lost it.

It matches ``budgets.rebuild.UsageSource`` by shape (the ledger does not import budgets). A budget
counts what was settled against it: the cost of every request and the input + output tokens of
every upstream call, so the sum of the ledger's ``cost_usd`` and tokens over the tenant (and
feature) in the period (cache hits record no tokens and no cost). Records this replica journalled
are written to the store first; another replica's journal is not visible until it writes it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from tierwise.router.ledger.spend_ledger import SpendLedger


class LedgerBudgetUsage:
    def __init__(self, ledger: SpendLedger, *, flush_timeout_s: float = 5.0) -> None:
        self._ledger = ledger
        self._flush_timeout_s = flush_timeout_s
        self.name = f"the spend ledger ({type(ledger.sink).__name__})"

    async def spent(
        self, tenant: str, feature: str | None, since: datetime, until: datetime, key: str | None = None
    ) -> tuple[Decimal, int]:
        # A ledger not started (a service built outside a server) writes its journal when it starts.
        if self._ledger.running and not await self._ledger.flush(self._flush_timeout_s):
            raise TimeoutError(f"this replica's journal was not written within {self._flush_timeout_s:g} s")
        filters = {"tenant": tenant} if feature is None else {"tenant": tenant, "feature": feature}
        # A key: its own records, and those with no key (written before the ledger recorded keys).
        keyed = [filters] if key is None else [{**filters, "api_key": k} for k in dict.fromkeys((key, ""))]
        rows = [
            row
            for one in keyed
            for row in await self._ledger.totals(since.timestamp(), until.timestamp(), (), one)
        ]
        usd = sum((row.cost_usd for row in rows), Decimal(0))
        return usd, sum(row.input_tokens + row.output_tokens for row in rows)
