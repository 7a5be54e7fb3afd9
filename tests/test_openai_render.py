"""Each failure the pipeline reports, as the HTTP front answers it: the status the gRPC code maps
to, the OpenAI error type and code, and the headers that tell an SDK whether and when to retry."""

from __future__ import annotations

import grpc
import pytest

from tierwise.router.auth import AuthThrottled, KeyStoreDown, Unauthenticated
from tierwise.router.errors import (
    BudgetExhausted,
    EmbedderOverloaded,
    NotFound,
    PromptTooLong,
    RequestCancelled,
    ServiceError,
    StreamBroken,
    UpstreamDeadline,
    UpstreamRejected,
    UpstreamUnavailable,
    WorkersBusy,
)
from tierwise.router.openai_render import failure, unauthenticated
from tierwise.router.outcome import Attempt
from tierwise.router.rate_limits import RateLimited

CASES: list[tuple[BaseException, int, str, str | None, dict[str, str]]] = [
    (UpstreamUnavailable("no tier could answer"), 503, "service_unavailable_error", None, {}),
    (StreamBroken("the stream broke"), 503, "service_unavailable_error", None, {}),
    (UpstreamDeadline("deadline"), 504, "timeout_error", None, {}),
    (UpstreamRejected(grpc.StatusCode.INVALID_ARGUMENT, "upstream: bad"), 400, "invalid_request_error", None, {}),
    (UpstreamRejected(grpc.StatusCode.PERMISSION_DENIED, "upstream: no"), 403, "permission_error", None, {}),
    (NotFound("no such thing"), 404, "not_found_error", None, {}),
    (RequestCancelled("gone"), 499, "cancelled", None, {}),
    (BudgetExhausted("budget spent"), 429, "insufficient_quota", "budget_exhausted", {"x-should-retry": "false"}),
    (EmbedderOverloaded("busy"), 503, "service_unavailable_error", "overloaded", {"retry-after": "1"}),
    (WorkersBusy("server busy", 0.3), 503, "service_unavailable_error", "overloaded", {"retry-after": "1", "retry-after-ms": "300"}),
    (PromptTooLong("messages: too long"), 400, "invalid_request_error", None, {}),
    (RateLimited("rate limit", 1.2), 429, "rate_limit_error", "rate_limited", {"retry-after": "2", "retry-after-ms": "1200"}),
    (RateLimited("too large", None), 429, "rate_limit_error", "rate_limited", {"x-should-retry": "false"}),
    (ServiceError("a store failed"), 500, "api_error", None, {}),
    (RuntimeError("a bug"), 500, "api_error", None, {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "status", "kind", "code", "headers"), CASES, ids=[type(c[0]).__name__ + str(c[1]) for c in CASES]
)
def test_a_failure_has_its_status_type_and_retry_headers(
    exc: BaseException, status: int, kind: str, code: str | None, headers: dict[str, str]
) -> None:
    answer = failure(exc, "req1")
    assert (answer.status, answer.body["error"]["type"], answer.body["error"]["code"]) == (status, kind, code)
    assert headers.items() <= answer.headers.items()
    assert answer.body["error"]["message"].endswith("(request_id=req1)")
    if not isinstance(exc, ServiceError):  # a bug's text stays in the log
        assert answer.body["error"]["message"] == "internal error (request_id=req1)"


def test_the_public_message_and_the_attempts_are_what_the_caller_sees() -> None:
    attempts = [Attempt("small", "m", False, 3.0, "timeout", "timed out after 2s")]
    answer = failure(
        UpstreamUnavailable("redis at 10.0.0.5 down", attempts, public="no tier could answer"), "r"
    )
    assert answer.body["error"]["message"] == "no tier could answer (request_id=r)"
    assert answer.body["tierwise"] == {
        "request_id": "r",
        "attempts": [{"tier": "small", "error_type": "timeout", "error": "timed out after 2s"}],
    }


def test_authentication_failures() -> None:
    missing = unauthenticated(Unauthenticated("missing 'authorization: Bearer <key>' metadata", "missing"))
    assert (missing.status, missing.body["error"]["type"]) == (401, "authentication_error")
    assert missing.body["error"]["message"] == "missing 'authorization: Bearer <key>' header"
    throttled = unauthenticated(AuthThrottled(4.2))
    assert (throttled.status, throttled.headers) == (429, {"retry-after": "5"})
    # The key store unreadable is UNAVAILABLE over gRPC: a 503 here, not a 401 the SDK never retries.
    store_down = unauthenticated(KeyStoreDown())
    assert (store_down.status, store_down.body["error"]["type"]) == (503, "service_unavailable_error")
