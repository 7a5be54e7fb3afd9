"""The spend ledger: every request's cost as a ``SpendRecord``, journalled on the request path and
written in batches to SQLite or PostgreSQL off it; the record builder and the report queries."""

from tierwise.router.ledger.budget_usage import LedgerBudgetUsage
from tierwise.router.ledger.builder import SpendRecordBuilder, load_user_salt
from tierwise.router.ledger.postgres_sink import PostgresSpendSink
from tierwise.router.ledger.record import CACHE_RESULTS, STATUS_OK, SpendRecord
from tierwise.router.ledger.reports import SinkReports, SpendQueries, SpendReports, SpendSource
from tierwise.router.ledger.spend_ledger import LedgerStats, SpendLedger, SpendSink, build_ledger
from tierwise.router.ledger.sql import Sample, SpendTotals, parse_dimension
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

__all__ = [
    "CACHE_RESULTS",
    "STATUS_OK",
    "LedgerBudgetUsage",
    "LedgerStats",
    "PostgresSpendSink",
    "Sample",
    "SinkReports",
    "SpendLedger",
    "SpendQueries",
    "SpendRecord",
    "SpendRecordBuilder",
    "SpendReports",
    "SpendSink",
    "SpendSource",
    "SpendTotals",
    "SqliteSpendSink",
    "build_ledger",
    "load_user_salt",
    "parse_dimension",
]
