"""The key stores against real SQLite, PostgreSQL and redis-server: one contract for all three;
the manager's rules (names, rotation, revocation); the snapshot a replica serves from and its fail
modes; the ledger's api_key column added to a table an older release made."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.redis_server import RedisServer, redis_server_factory
from tests.test_ledger import spend
from tests.test_ledger_postgres import Database, database
from tierwise.router.auth import sha256_hex
from tierwise.router.config import KeysConfig
from tierwise.router.keys import (
    SECRET_PREFIX,
    KeyBudget,
    KeyInputError,
    KeyManager,
    KeyStore,
    KeyStoreUnavailable,
    StoredKeys,
    parse_budget,
    parse_duration,
)
from tierwise.router.keys.manage import describe, key_budgets
from tierwise.router.keys.postgres_store import PostgresKeyStore
from tierwise.router.keys.record import KeyConflict, KeyNotFound, KeyRecord
from tierwise.router.keys.redis_store import RedisKeyStore
from tierwise.router.keys.sqlite_store import SqliteKeyStore
from tierwise.router.ledger.postgres_sink import PostgresSpendSink
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.router.observability.label_values import BoundedLabelValues
from tierwise.router.observability.metrics import Metrics

__all__ = ["database", "redis_server_factory"]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> Iterator[KeyStore]:
    made: KeyStore
    if request.param == "sqlite":
        made = SqliteKeyStore(tmp_path / "keys.sqlite3")
    elif request.param == "postgres":
        db: Database = request.getfixturevalue("database")
        db.create()
        made = PostgresKeyStore(db.dsn)
    else:
        made = RedisKeyStore.from_url(redis_server_factory().url, 2.0)
    try:
        yield made
    finally:
        made.close()


def record(name: str = "app", **fields: object) -> KeyRecord:
    values: dict[str, object] = {
        "id": f"key_{name}",
        "name": name,
        "tenant": "acme",
        "secret_sha256": sha256_hex(f"secret-{name}"),
        "created_at": 1000.0,
    }
    values.update(fields)
    return KeyRecord(**values)  # type: ignore[arg-type]


def test_every_store_keeps_keys_bumps_the_version_and_refuses_a_second_name(store: KeyStore) -> None:
    assert store.load() == (0, [])
    first = record("app", rpm=60, tpm=1000, budget=KeyBudget(Decimal("5.25"), "day"), expires_at=5000.0)
    store.insert(first)
    assert store.version() == 1
    with pytest.raises(KeyConflict):
        store.insert(record("app", id="key_other", secret_sha256=sha256_hex("x")))
    assert store.version() == 1  # a refused write changes nothing
    second = record("batch", admin=True, created_at=2000.0)
    store.insert(second)
    revoked = record("app", rpm=60, tpm=1000, budget=first.budget, expires_at=5000.0, revoked_at=3000.0)
    store.replace(revoked)
    version, keys = store.load()
    assert version == store.version() == 3
    assert keys == [revoked, second]  # oldest first, every field back as written
    with pytest.raises(KeyNotFound):
        store.replace(record("ghost"))


def test_a_store_that_cannot_be_reached_raises_unavailable(tmp_path: Path) -> None:
    store = RedisKeyStore.from_url("redis://127.0.0.1:1/0", 0.2)
    with pytest.raises(KeyStoreUnavailable, match="key store redis"):
        store.version()
    with pytest.raises(KeyStoreUnavailable):
        store.insert(record())
    pg = PostgresKeyStore("host=127.0.0.1 port=1 user=nobody dbname=none", timeout_s=1)
    with pytest.raises(KeyStoreUnavailable, match="key store postgresql"):
        pg.load()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_manager_makes_a_prefixed_secret_stores_only_its_digest_and_rotates_with_grace(
    tmp_path: Path,
) -> None:
    store, clock = SqliteKeyStore(tmp_path / "keys.sqlite3"), Clock()
    manager = KeyManager(store, {"from-yaml"}, clock)
    made = manager.create("acme", name="app", expires_in_s=3600, rpm=5)
    assert made.secret.startswith(SECRET_PREFIX) and len(made.secret) > 40
    assert made.record.secret_sha256 == sha256_hex(made.secret)
    stored = (tmp_path / "keys.sqlite3").read_bytes()
    assert made.secret.encode() not in stored
    info = describe(made.record, clock.now)
    assert (
        info["state"] == "active"
        and made.secret not in str(info)
        and sha256_hex(made.secret) not in str(info)
    )
    rotated = manager.rotate("app", grace_s=60)
    assert rotated.record.id == made.record.id and rotated.record.previous_sha256 == sha256_hex(made.secret)
    assert describe(rotated.record, clock.now)["previous_secret_until"]
    clock.now += 3600
    assert manager.find(made.record.id).state(clock.now) == "expired"
    with pytest.raises(KeyInputError, match="is expired") as caught:
        manager.rotate("app")
    assert caught.value.field == "key"
    revoked = manager.revoke("app")
    assert revoked.revoked_at == clock.now and manager.revoke("app").revoked_at == clock.now
    store.close()


@pytest.mark.parametrize(
    ("call", "field", "words"),
    [
        (lambda m: m.create("acme", name="bad name"), "name", "letters, digits"),
        (lambda m: m.create("acme", name="from-yaml"), "name", "auth.api_keys"),
        (lambda m: m.create("", name="x"), "tenant", "1-128"),
        (lambda m: m.create("acme", rpm=0), "rpm", "above 0"),
        (lambda m: m.create("acme", expires_in_s=-1), "expires_in_s", "above 0"),
        (lambda m: m.revoke("nope"), "key", "no stored key"),
        (lambda m: m.rotate("nope", grace_s=-1), "grace_s", "0 or more"),
    ],
)
def test_bad_inputs_name_their_field(
    tmp_path: Path, call: Callable[[KeyManager], object], field: str, words: str
) -> None:
    manager = KeyManager(SqliteKeyStore(tmp_path / "k.sqlite3"), {"from-yaml"})
    with pytest.raises(KeyInputError) as caught:
        call(manager)
    assert caught.value.field == field and words in caught.value.message


def test_a_second_key_with_a_stored_name_is_refused_naming_the_name(tmp_path: Path) -> None:
    manager = KeyManager(SqliteKeyStore(tmp_path / "k.sqlite3"))
    manager.create("acme", name="app")
    with pytest.raises(KeyInputError, match="'app' already") as caught:
        manager.create("globex", name="app")
    assert caught.value.field == "name"


def test_durations_and_budgets_parse_or_say_what_they_expect() -> None:
    assert parse_duration("30d", "f") == 30 * 86400 and parse_duration("1.5h", "f") == 5400
    assert parse_budget("5/day") == KeyBudget(Decimal(5), "day")
    assert parse_budget("$12.50 / month") == KeyBudget(Decimal("12.50"), "month")
    for text in ("30", "0d", "-1d", "3y", ""):
        with pytest.raises(KeyInputError, match="unit s, m, h, d or w"):
            parse_duration(text, "expires_in_s")
    for text in ("5", "5/week", "0/day", "five/day"):
        with pytest.raises(KeyInputError) as caught:
            parse_budget(text)
        assert caught.value.field == "budget_usd"


def test_key_budgets_are_named_as_config_key_budgets() -> None:
    [budget] = key_budgets([record("app", budget=KeyBudget(Decimal(3), "month")), record("free", id="key_2")])
    assert budget.name == "acme/key:app/month" and budget.usd == Decimal(3)


class FlakyStore:
    """A real SQLite store that can be made unreachable."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteKeyStore(path)
        self.name = "flaky"
        self.down = False
        self.loads = 0

    def _check(self) -> None:
        if self.down:
            raise KeyStoreUnavailable("key store flaky: down")

    def version(self) -> int:
        self._check()
        return self.inner.version()

    def load(self) -> tuple[int, list[KeyRecord]]:
        self._check()
        self.loads += 1
        return self.inner.load()

    def insert(self, record: KeyRecord) -> None:
        self.inner.insert(record)

    def replace(self, record: KeyRecord) -> None:
        self.inner.replace(record)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_the_snapshot_serves_the_last_keys_for_the_window_then_closed_refuses(
    tmp_path: Path, fail_mode: str
) -> None:
    store, clock, wall = FlakyStore(tmp_path / "k.sqlite3"), Clock(), Clock()
    config = KeysConfig(poll_interval_s=1, fail_mode=fail_mode, max_stale_s=10)  # type: ignore[arg-type]
    keys = StoredKeys(store, config, clock=clock, wall_clock=wall)
    assert keys.lookup(sha256_hex("anything")) == "store_down"  # nothing read yet
    made = KeyManager(store, (), wall).create("acme", name="app", expires_in_s=100)
    await keys.refresh()
    digest = made.record.secret_sha256
    assert keys.lookup(digest) == made.record
    assert keys.lookup(sha256_hex("guess")) == "unknown"
    assert await keys.refresh() is False and store.loads == 1  # the version did not move: no load
    store.down = True
    clock.now += 10
    assert await keys.refresh() is False
    assert keys.lookup(digest) == made.record  # within max_stale_s of the last read
    clock.now += 1
    assert keys.lookup(digest) == ("store_down" if fail_mode == "closed" else made.record)
    store.down = False
    await keys.refresh()
    assert keys.lookup(digest) == made.record
    wall.now += 100
    assert keys.lookup(digest) == "expired"
    await keys.aclose()


@pytest.mark.asyncio
async def test_a_revocation_is_seen_at_the_next_read_and_a_rotated_secret_lasts_its_grace(
    tmp_path: Path,
) -> None:
    store, wall = SqliteKeyStore(tmp_path / "k.sqlite3"), Clock()
    manager = KeyManager(store, (), wall)
    keys = StoredKeys(store, KeysConfig(), wall_clock=wall)
    old = manager.create("acme", name="app")
    new = manager.rotate("app", grace_s=30)
    await keys.refresh()
    assert keys.lookup(sha256_hex(old.secret)) == new.record == keys.lookup(sha256_hex(new.secret))
    wall.now += 30
    assert keys.lookup(sha256_hex(old.secret)) == "revoked"
    manager.revoke("app")
    assert keys.lookup(sha256_hex(new.secret)) == new.record  # not read yet
    keys.request_refresh()  # what SIGHUP does
    await asyncio.sleep(0)
    await keys.refresh()
    assert keys.lookup(sha256_hex(new.secret)) == "revoked"
    await keys.aclose()


def check_migrated(sink: SqliteSpendSink | PostgresSpendSink) -> None:
    """The old row reads back with no key; a new record keeps its key."""
    try:
        assert sink.write([spend(1, api_key="app")]) == 1
        old, new = sink.get("old"), sink.get("req-00001")
        assert old is not None and old.api_key == ""
        assert new is not None and new.api_key == "app"
    finally:
        sink.close()


def test_a_spend_table_an_older_release_made_gets_the_api_key_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    SqliteSpendSink(path).close()
    with sqlite3.connect(path) as db:  # as the release before this column made it
        db.execute("ALTER TABLE tierwise_spend DROP COLUMN api_key")
        db.execute(
            "INSERT INTO tierwise_spend (request_id, ts, tenant, feature, tags, user_hash, experiment,"
            " arm, tier, model, provider, cache_result, input_tokens, output_tokens, cached_input_tokens,"
            " cost_usd, saved_usd, router_cost_usd, total_ms, upstream_ms, overhead_ms, ttft_ms, status,"
            " error_type, attempts, fallback, reason) SELECT 'old', 1.0, 'acme', '', '{}', '', '', '', '',"
            " '', '', 'miss', 0, 0, 0, '0', '0', '0', 0, 0, 0, 0, 'OK', '', 0, 0, ''"
        )
    check_migrated(SqliteSpendSink(path))


def test_the_api_key_metric_label_is_opt_in_and_bounded() -> None:
    assert "api_key" not in Metrics().labels
    metrics = Metrics(("tenant", "api_key"), api_keys=BoundedLabelValues(max_values=1))
    for i, key in enumerate(["app", "batch", "app"]):
        metrics.observe_spend(spend(i, api_key=key))

    def requests(key: str) -> float | None:
        labels = {"tenant": "acme", "api_key": key, "status": "OK", "cache_result": "miss"}
        return metrics.registry.get_sample_value("tierwise_requests_total", labels)

    assert (requests("app"), requests("other"), requests("batch")) == (2.0, 1.0, None)


def test_an_older_postgres_spend_table_gets_the_api_key_column(database: Database) -> None:
    database.create()
    first = PostgresSpendSink(database.dsn)
    assert first.get("none") is None  # the first call makes the table (the session is lazy)
    first.close()
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE tierwise_spend DROP COLUMN api_key")
        conn.execute(
            "INSERT INTO tierwise_spend SELECT * FROM (SELECT 'old', 1.0::float8, 'acme', '', '{}'::jsonb,"
            " '', '', '', '', '', '', 'miss', 0, 0, 0, 0::numeric, 0::numeric, 0::numeric, 0::float8,"
            " 0::float8, 0::float8, 0::float8, 'OK', '', 0, false, '') AS old_row"
        )
    check_migrated(PostgresSpendSink(database.dsn))
