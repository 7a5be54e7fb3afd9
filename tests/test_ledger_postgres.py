"""The PostgreSQL spend store against a real server; each test creates and drops its own database.

Set TIERWISE_TEST_POSTGRES to a libpq connection string for the server's admin
database (default: host=127.0.0.1 port=5432 user=postgres dbname=postgres).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.test_ledger import spend, until
from tests.test_ledger_reports import check_store
from tierwise.router.ledger.postgres_sink import PostgresSpendSink
from tierwise.router.ledger.spend_ledger import SpendLedger

ADMIN_DSN = os.environ.get("TIERWISE_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@dataclass
class Database:
    admin: psycopg.Connection[tuple[object, ...]]
    name: str
    dsn: str

    def create(self) -> None:
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))


@pytest.fixture
def database() -> Iterator[Database]:
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_DSN!r} (set TIERWISE_TEST_POSTGRES): {exc}")
    name = f"tierwise_test_{uuid.uuid4().hex[:12]}"
    try:
        yield Database(admin, name, make_conninfo(ADMIN_DSN, dbname=name))
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def test_postgres_store(database: Database) -> None:
    database.create()
    sink = PostgresSpendSink(database.dsn)
    try:
        check_store(sink)
    finally:
        sink.close()


def test_money_is_numeric_and_nul_characters_cannot_poison_a_batch(database: Database) -> None:
    database.create()
    sink = PostgresSpendSink(database.dsn)
    try:
        assert sink.write([spend(1, feature="a\x00b", tags={"k\x00": "v\x00"})]) == 1
        stored = sink.get("req-00001")
        assert stored is not None and stored.feature == "a\ufffdb" and stored.tags == {"k\ufffd": "v\ufffd"}
        with psycopg.connect(database.dsn) as conn:
            kind = conn.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_name = 'tierwise_spend'"
                " AND column_name = 'cost_usd'"
            ).fetchone()
            indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes")}
        assert kind == ("numeric",)
        assert {"tierwise_spend_tenant_ts", "tierwise_spend_feature_ts"} <= indexes
    finally:
        sink.close()


@pytest.mark.asyncio
async def test_the_ledger_keeps_records_until_postgres_is_there(database: Database, tmp_path: Path) -> None:
    sink = PostgresSpendSink(database.dsn, connect_timeout_s=2)  # its database does not exist yet
    ledger = SpendLedger(tmp_path / "ledger", sink, batch_size=4, retry_initial_s=0.01, retry_max_s=0.05)
    await ledger.start()
    for i in range(9):
        ledger.record(spend(i))
    await until(lambda: ledger.stats().write_failures >= 2)
    assert ledger.stats().backlog == 9 and not ledger.stats().store_ok
    database.create()
    assert await ledger.flush(20)
    assert sum(t.requests for t in sink.totals(0, 2e9)) == 9
    assert ledger.stats().store_ok
    await ledger.aclose()


@pytest.mark.asyncio
async def test_a_postgres_dsn_in_the_config_selects_the_postgres_store(
    database: Database, tmp_path: Path
) -> None:
    from tests.test_ledger_builder import config
    from tierwise.router.ledger.spend_ledger import build_ledger

    database.create()
    settings = config(postgres_dsn=database.dsn, retention_days=None)  # spend() dates from 2023
    settings = settings.model_copy(update={"store": settings.store.model_copy(update={"path": tmp_path})})
    ledger = build_ledger(settings)
    assert ledger is not None
    await ledger.start()
    ledger.record(spend(1))
    assert await ledger.flush(10)
    await ledger.aclose()
    with psycopg.connect(database.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM tierwise_spend").fetchone() == (1,)
    assert not (tmp_path / "spend.sqlite3").exists()
