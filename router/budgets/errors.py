"""The budget store failing, as the caller and the operator each see it."""

from __future__ import annotations

import grpc

from tierwise.router.errors import ServiceError


class BudgetStoreUnavailable(ServiceError):
    """The budget store cannot be reached or failed; the message names it (for the log), what the
    caller is told does not (a store's address is not a tenant's to see)."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, public: str = "the budget store is unavailable") -> None:
        super().__init__(message, public=public)
