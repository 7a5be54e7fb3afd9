"""Step 11's bookkeeping for one finished request: the spend record (ledger, off the
request path), the metrics, and the request's span, all from the same record so they
reconcile with each other and with the response's ``cost_usd``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

from opentelemetry.trace import Span

from tierwise.router.learning.loop import LearningLoop
from tierwise.router.ledger.builder import SpendRecordBuilder
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.observability.metrics import Metrics
from tierwise.router.observability.tracing import Tracing, finish_request
from tierwise.router.outcome import Completion, Decision, PartialAnswer
from tierwise.router.types import RequestSpec


class Accounting:
    def __init__(
        self,
        builder: SpendRecordBuilder,
        ledger: SpendLedger | None,
        metrics: Metrics,
        tracing: Tracing,
        learning: LearningLoop | None = None,
    ) -> None:
        self.builder = builder
        self.ledger = ledger
        self.metrics = metrics
        self.tracing = tracing
        self.learning = learning or LearningLoop()

    @contextlib.contextmanager
    def request_span(self, rpc: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Iterator[Span]:
        with self.tracing.request_span(
            f"tierwise.{rpc}", {"rpc.method": rpc}, self.tracing.extract(metadata)
        ) as span:
            yield span

    def _book(self, record: SpendRecord, span: Span) -> None:
        if self.ledger is not None:
            self.ledger.record(record)
        self.metrics.observe_spend(record)
        self.metrics.observe_cache(record.cache_result)
        finish_request(span, record)

    def decided(self, decision: Decision) -> None:
        self.metrics.observe_decision(decision.tier, decision.reason)

    def completed(self, spec: RequestSpec, completion: Completion, span: Span) -> None:
        self.decided(completion.decision)
        self._book(self.builder.for_completion(spec, completion), span)
        self.learning.observe(spec, completion)  # 13 sample: queued only, judged after the response

    def routed(self, spec: RequestSpec, decision: Decision, started: float, span: Span) -> None:
        self.decided(decision)
        total_ms = (time.perf_counter() - started) * 1000
        self._book(self.builder.for_decision(spec, decision, total_ms=total_ms), span)

    def failed(
        self,
        spec: RequestSpec,
        request_id: str,
        error: BaseException,
        started: float,
        span: Span,
        partial: PartialAnswer | None = None,
    ) -> None:
        total_ms = (time.perf_counter() - started) * 1000
        record = self.builder.for_failure(spec, request_id, error, total_ms=total_ms, partial=partial)
        self._book(record, span)
