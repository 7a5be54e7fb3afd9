"""Failures the pipeline reports to callers, each with its gRPC status."""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tierwise.router.outcome import Attempt


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, attempts: Sequence[Attempt] = (), *, public: str | None = None) -> None:
        super().__init__(message)
        self.message = message  # the whole story, for the log
        # What the caller's status says: the message, unless it names infrastructure (a store's
        # address) that is not the caller's to see.
        self.public = message if public is None else public
        self.attempts = tuple(attempts)

    def attempts_summary(self) -> list[dict[str, str]]:
        """Each try's tier and why it failed, as both fronts report them to the caller."""
        return [{"tier": a.tier, "error_type": a.error_type, "error": a.error} for a in self.attempts]


class UpstreamUnavailable(ServiceError):
    """Every tier tried failed (or none could be tried)."""

    code = grpc.StatusCode.UNAVAILABLE


class UpstreamDeadline(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UpstreamRejected(ServiceError):
    """The upstream refused the request itself (4xx): retrying elsewhere will not help."""

    def __init__(self, code: grpc.StatusCode, message: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(message, attempts)
        self.code = code


class StreamBroken(ServiceError):
    """The upstream failed after text was already sent to the caller."""

    code = grpc.StatusCode.UNAVAILABLE


class RequestCancelled(ServiceError):
    """The caller cancelled the call (or its deadline passed on the caller's side)."""

    code = grpc.StatusCode.CANCELLED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class BudgetExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


RETRY_AFTER_KEY = "retry-after-ms"
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # google.rpc.Status, as grpcio-status would send it


class RetryLater(ServiceError):
    """RESOURCE_EXHAUSTED with the delay after which the same request would be admitted (none when it
    never would), sent in the trailing metadata: ``retry-after-ms`` and a google.rpc RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = None if retry_after_s is None else max(1, math.ceil(retry_after_s * 1000))

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if self.retry_after_ms is None:
            return ()
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=self.retry_after_ms // 1000, nanos=self.retry_after_ms % 1000 * 1_000_000
            )
        )
        detail = any_pb2.Any()
        detail.Pack(retry)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return ((RETRY_AFTER_KEY, str(self.retry_after_ms)), (STATUS_DETAILS_KEY, status.SerializeToString()))


class EmbedderOverloaded(RetryLater):
    """The embedding queue is full: the request was refused before any upstream call, and may be retried."""


class WorkersBusy(RetryLater):
    """Every place in the request workers' queue is taken: refused before the work, retry later."""


class PromptTooLong(ServiceError):
    """The prompt is over ``server.max_prompt_tokens``: refused before any model reads it."""

    code = grpc.StatusCode.INVALID_ARGUMENT
