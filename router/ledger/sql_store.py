"""The reads and the purge every SQL spend store shares, written once over its ``Dialect``.

A store supplies only how it runs a statement (its connection, lock or session);
the queries and the row conversions come from ``ledger.sql``, so the stores'
answers cannot drift apart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.sql import (
    Dialect,
    Sample,
    SampleQuery,
    SpendTotals,
    from_row,
    purge_sql,
    samples_from_rows,
    samples_sql,
    select_one_sql,
    totals_from_rows,
    totals_sql,
)


class SqlSpendStore(ABC):
    """``get``, ``totals``, ``samples`` and ``purge_older_than`` of a ``SpendSink`` over SQL."""

    dialect: ClassVar[Dialect]

    @abstractmethod
    def _fetch_all(self, query: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """Every row ``query`` returns."""

    @abstractmethod
    def _execute(self, query: str, params: Sequence[Any]) -> int:
        """Run a statement that changes rows; how many it changed."""

    def get(self, request_id: str) -> SpendRecord | None:
        rows = self._fetch_all(select_one_sql(self.dialect), (request_id,))  # the primary key: 0 or 1
        return from_row(self.dialect, rows[0]) if rows else None

    def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]:
        dims, query, params = totals_sql(self.dialect, since, until, by, filters or {})
        return totals_from_rows(dims, self._fetch_all(query, params))

    def samples(self, query: SampleQuery) -> list[Sample]:
        dims, sql, params = samples_sql(self.dialect, query)
        return samples_from_rows(self.dialect, dims, query.columns, self._fetch_all(sql, params))

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - seconds
        return self._execute(purge_sql(self.dialect), (cutoff,))
