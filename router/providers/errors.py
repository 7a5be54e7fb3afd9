"""How an upstream call failed, and whether another try can help."""

from __future__ import annotations

import enum


class ErrorType(enum.Enum):
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    PROTOCOL = "protocol"


RETRYABLE = frozenset(
    {ErrorType.TIMEOUT, ErrorType.CONNECTION, ErrorType.RATE_LIMITED, ErrorType.SERVER_ERROR}
)


class ProviderError(Exception):
    """An upstream call failed; ``error_type`` says whether another try can help.

    ``message`` is shown to callers; ``upstream`` (the base URL) is for the operator's log only.
    """

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        upstream: str = "",
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.upstream = upstream

    @property
    def retryable(self) -> bool:
        return self.error_type in RETRYABLE
