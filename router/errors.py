"""Failures the pipeline reports to callers, each with its gRPC status."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

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


class EmbedderOverloaded(ServiceError):
    """The embedding queue is full: the request was refused before any upstream call, and may be retried."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
