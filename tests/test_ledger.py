"""The spend ledger over real SQLite: batching, crash replay, a failing store, restart, rotation."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio

from tierwise.router.ledger.journal import Journal, JournalError
from tierwise.router.ledger.record import SpendRecord, decode_line, encode_line
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

REPO = Path(__file__).resolve().parents[1]


def spend(i: int, **fields: object) -> SpendRecord:
    values: dict[str, object] = {
        "request_id": f"req-{i:05d}",
        "ts": 1_700_000_000.0 + i,
        "tenant": "acme",
        "feature": "chat",
        "tags": {"team": "search"},
        "tier": "small",
        "model": "small-model",
        "provider": "openai",
        "input_tokens": 100 + i,
        "output_tokens": 20,
        "cost_usd": Decimal("0.000081") + Decimal(i) * Decimal("0.0000005"),
        "attempts": 1,
    }
    values.update(fields)
    return SpendRecord(**values)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class ObservedSink:
    """A real SQLite sink that notes each batch and can be made to fail or to hold a write."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteSpendSink(path)
        self.batches: list[int] = []
        self.failing = False
        self.failures = 0
        self.hold_after: int | None = None  # writes after this many batches wait for `release`
        self.release = threading.Event()
        self.holding = False

    def write(self, records: Sequence[SpendRecord]) -> int:
        if self.hold_after is not None and len(self.batches) >= self.hold_after:
            self.holding = True
            self.release.wait(10)
        if self.failing:
            self.failures += 1
            raise OSError("store unreachable")
        self.batches.append(len(records))
        return self.inner.write(records)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def count(self) -> int:
        return sum(t.requests for t in self.inner.totals(0, 2e9))


@pytest_asyncio.fixture
async def sink(tmp_path: Path) -> AsyncIterator[ObservedSink]:
    observed = ObservedSink(tmp_path / "spend.sqlite3")
    yield observed
    observed.inner.close()


def ledger_for(directory: Path, sink: ObservedSink, **options: object) -> SpendLedger:
    settings: dict[str, object] = {"batch_size": 10, "flush_interval_s": 3600.0, "retry_initial_s": 0.01}
    settings.update(options)
    return SpendLedger(directory, sink, **settings)  # type: ignore[arg-type]


async def started_with_records(
    directory: Path, sink: ObservedSink, records: int, *, store_down: bool = False, **options: object
) -> SpendLedger:
    """A started ledger (``ledger_for``) given ``spend(0)`` .. ``spend(records - 1)``; with ``store_down`` the
    sink fails from before the first record."""
    ledger = ledger_for(directory, sink, **options)
    await ledger.start()
    if store_down:
        sink.failing = True
    for i in range(records):
        ledger.record(spend(i))
    return ledger


@pytest.mark.asyncio
async def test_full_batches_go_at_once_and_the_rest_on_flush(tmp_path: Path, sink: ObservedSink) -> None:
    ledger = await started_with_records(tmp_path / "ledger", sink, 25)
    await until(lambda: ledger.stats().backlog == 5)
    assert sink.batches == [10, 10]
    assert await ledger.flush(10)
    assert sink.batches == [10, 10, 5]
    assert sink.count() == 25
    await ledger.aclose()


@pytest.mark.asyncio
async def test_a_partial_batch_goes_after_the_flush_interval(tmp_path: Path, sink: ObservedSink) -> None:
    ledger = await started_with_records(tmp_path / "ledger", sink, 3, batch_size=1000, flush_interval_s=0.05)
    await until(lambda: sink.batches == [3])
    await ledger.aclose()


@pytest.mark.asyncio
async def test_lookup_finds_pending_and_stored_records_of_the_tenant_only(
    tmp_path: Path, sink: ObservedSink
) -> None:
    ledger = ledger_for(tmp_path / "ledger", sink, batch_size=1000)
    await ledger.start()
    ledger.record(spend(1))
    pending = await ledger.lookup("req-00001", "acme")
    assert pending == spend(1)
    assert await ledger.lookup("req-00001", "globex") is None
    assert await ledger.flush(10)
    assert sink.count() == 1
    assert await ledger.lookup("req-00001", "acme") == spend(1)
    assert await ledger.lookup("req-00001", "globex") is None
    assert await ledger.lookup("req-99999", "acme") is None
    await ledger.aclose()


_CRASHING_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from tests.test_ledger import spend
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

async def main() -> None:
    ledger = SpendLedger(Path(sys.argv[1]), SqliteSpendSink(Path(sys.argv[2])), batch_size=10_000, flush_interval_s=3600)
    await ledger.start()
    for i in range(50):
        ledger.record(spend(i))
    assert await ledger.flush(30)
    for i in range(50, 120):
        ledger.record(spend(i))
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_records_survive_kill_9_and_are_replayed_exactly_once(tmp_path: Path) -> None:
    directory, db = tmp_path / "ledger", tmp_path / "spend.sqlite3"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_WRITER, str(directory), str(db), cwd=REPO
    )
    assert await asyncio.wait_for(process.wait(), 60) == -signal.SIGKILL
    sink = ObservedSink(db)
    assert sink.count() == 50  # the first 50 were stored before the crash, the other 70 only journalled
    # As if the process had died after a store write but before moving the offset.
    sink.inner.write([spend(i) for i in range(50, 60)])
    ledger = ledger_for(directory, sink, batch_size=1000)
    assert ledger.stats().backlog == 70
    await ledger.start()
    assert await ledger.flush(10)
    assert sink.count() == 120
    assert ledger.stats().written == 60  # the ten already stored were skipped, not doubled
    ids = {r.request_id for r in [sink.inner.get(f"req-{i:05d}") for i in range(120)] if r is not None}
    assert len(ids) == 120
    await ledger.aclose()
    sink.inner.close()


@pytest.mark.asyncio
async def test_a_failing_store_keeps_records_until_it_recovers(tmp_path: Path, sink: ObservedSink) -> None:
    ledger = await started_with_records(
        tmp_path / "ledger", sink, 12, store_down=True, batch_size=5, retry_max_s=0.05
    )
    await until(lambda: sink.failures >= 3)
    assert not ledger.stats().store_ok
    assert ledger.stats().backlog == 12
    assert await ledger.lookup("req-00003", "acme") == spend(3)  # still answerable while the store is down
    sink.failing = False
    assert await ledger.flush(10)
    assert sink.count() == 12
    stats = ledger.stats()
    assert stats.store_ok and stats.backlog == 0 and stats.write_failures >= 3
    await ledger.aclose()


@pytest.mark.asyncio
async def test_records_beyond_the_memory_queue_are_read_back_from_the_journal(
    tmp_path: Path, sink: ObservedSink
) -> None:
    ledger = await started_with_records(
        tmp_path / "ledger", sink, 10, store_down=True, batch_size=4, max_queued=3, retry_max_s=0.05
    )
    await until(lambda: sink.failures >= 1)
    sink.failing = False
    assert await ledger.flush(10)
    # The three queued records go first (a batch the queue cut short), the spilled seven after.
    assert sink.batches == [3, 4, 3]
    ledger.record(spend(10))  # caught up: the queue takes records again
    assert await ledger.flush(10)
    assert sink.batches == [3, 4, 3, 1] and sink.count() == 11
    await ledger.aclose()


@pytest.mark.asyncio
async def test_records_a_dead_store_did_not_take_wait_in_the_journal_for_the_next_start(
    tmp_path: Path, sink: ObservedSink
) -> None:
    ledger = await started_with_records(tmp_path / "ledger", sink, 7, store_down=True, retry_max_s=0.05)
    await ledger.aclose(timeout_s=0.2)

    store = ObservedSink(tmp_path / "spend.sqlite3")  # the closed ledger closed its store
    assert store.count() == 0
    restarted = ledger_for(tmp_path / "ledger", store)
    assert restarted.stats().backlog == 7
    await restarted.start()
    assert await restarted.flush(10)
    assert store.count() == 7
    await restarted.aclose()


@pytest.mark.asyncio
async def test_a_clean_restart_replays_nothing(tmp_path: Path, sink: ObservedSink) -> None:
    ledger = await started_with_records(tmp_path / "ledger", sink, 4)
    await ledger.aclose()  # flushes
    assert sink.batches == [4]
    store = ObservedSink(tmp_path / "spend.sqlite3")
    restarted = ledger_for(tmp_path / "ledger", store)
    assert restarted.stats().backlog == 0
    await restarted.start()
    assert await restarted.lookup("req-00002", "acme") == spend(2)
    assert store.count() == 4
    await restarted.aclose()
    assert store.batches == []


@pytest.mark.asyncio
async def test_rotation_keeps_pending_records_findable(tmp_path: Path, sink: ObservedSink) -> None:
    directory = tmp_path / "ledger"
    ledger = ledger_for(directory, sink, batch_size=5, rotate_bytes=1)
    sink.hold_after = 1  # the second write waits: seven records stay pending in the rotated journal
    for i in range(12):
        ledger.record(spend(i))
    before = (directory / "journal").stat().st_size
    await ledger.start()
    await until(lambda: sink.holding)
    assert sink.batches == [5]
    assert (directory / "journal").stat().st_size < before
    for i in range(5, 12):
        assert await ledger.lookup(f"req-{i:05d}", "acme") == spend(i)
    sink.release.set()
    assert await ledger.flush(10)
    assert sink.count() == 12
    await ledger.aclose()


@pytest.mark.asyncio
async def test_unreadable_journal_lines_are_set_aside(tmp_path: Path, sink: ObservedSink) -> None:
    directory = tmp_path / "ledger"
    first = ledger_for(directory, ObservedSink(tmp_path / "first.sqlite3"))
    await first.start()
    await first.aclose()
    with (directory / "journal").open("ab") as journal:
        journal.write(b"not json\n" + encode_line(spend(1)) + b'{"request_id": "cut sho')
    ledger = ledger_for(directory, sink)
    assert ledger.stats().backlog == 3  # the cut-off write was ended with a newline on open
    await ledger.start()
    assert await ledger.flush(10)
    assert sink.count() == 1
    assert ledger.stats().rejected_lines == 2
    assert (directory / "rejected.jsonl").read_bytes() == b'not json\n{"request_id": "cut sho\n'
    await ledger.aclose()


@pytest.mark.asyncio
async def test_a_failed_journal_append_keeps_the_record_in_memory(tmp_path: Path, sink: ObservedSink) -> None:
    ledger = ledger_for(tmp_path / "ledger", sink)
    await ledger.start()
    journal = ledger._journal
    writable = journal._append_fd
    journal._append_fd = os.open(tmp_path / "ledger" / "journal", os.O_RDONLY)  # write() now fails: EBADF
    ledger.record(spend(1))
    os.close(journal._append_fd)
    journal._append_fd = writable
    assert ledger.stats().journal_errors == 1
    assert await ledger.lookup("req-00001", "acme") == spend(1)
    assert await ledger.flush(10)
    assert sink.count() == 1
    await ledger.aclose()


@pytest.mark.asyncio
async def test_retention_purges_old_records(tmp_path: Path, sink: ObservedSink) -> None:
    now = time.time()
    ledger = ledger_for(tmp_path / "ledger", sink, retention_s=86400.0, purge_interval_s=0.05)
    ledger.record(spend(1, ts=now - 3 * 86400))
    ledger.record(spend(2, ts=now - 60))
    await ledger.start()
    assert await ledger.flush(10)
    await until(lambda: sink.count() == 1)  # the periodic purge
    assert sink.inner.get("req-00002") is not None
    sink.inner.write([spend(3, ts=now - 2 * 86400)])
    assert await ledger.purge() == 1
    await ledger.aclose()


def test_a_directory_is_used_by_one_ledger_at_a_time(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with pytest.raises(JournalError, match="another ledger"):
        Journal(tmp_path)
    journal.close()
    Journal(tmp_path).close()


def test_a_foreign_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "journal").write_bytes(b"something else\n")
    with pytest.raises(JournalError, match="not a tierwise spend journal"):
        Journal(tmp_path)
    assert (tmp_path / "journal").read_bytes() == b"something else\n"
    Journal(tmp_path / "other").close()  # the lock was released


def test_records_round_trip_through_a_journal_line_exactly() -> None:
    record = spend(3, cost_usd=Decimal("0.000000123456789"), tags={"team": "ünï", "env": "prod"})
    assert decode_line(encode_line(record)) == record


@pytest.mark.parametrize(
    "bad",
    [
        {"cost_usd": Decimal("-1")},
        {"cost_usd": 0.5},
        {"input_tokens": -1},
        {"cache_result": "hit"},
        {"request_id": ""},
    ],
)
def test_an_unstorable_record_is_refused_at_once(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        spend(1, **bad)


@pytest.mark.asyncio
async def test_the_config_builds_an_embedded_ledger_or_none(tmp_path: Path) -> None:
    from tests.test_ledger_builder import config
    from tierwise.router.ledger.spend_ledger import build_ledger

    assert build_ledger(config(enabled=False)) is None
    settings = config(batch_size=2, retention_days=None).model_copy(
        update={"store": config().store.model_copy(update={"path": tmp_path})}
    )
    ledger = build_ledger(settings)
    assert ledger is not None
    await ledger.start()
    ledger.record(spend(1))
    assert await ledger.flush(10)
    assert await ledger.lookup("req-00001", "acme") == spend(1)
    await ledger.aclose()
    assert (tmp_path / "ledger" / "journal").exists() and (tmp_path / "spend.sqlite3").exists()
