"""What operators see: Prometheus metrics, OpenTelemetry tracing, structured logs, the admin HTTP
server (``/metrics``, ``/dashboard``) and the spend-anomaly checker."""

from tierwise.router.observability.admin_http import AdminServer
from tierwise.router.observability.anomaly import Anomaly, AnomalyChecker, find_anomalies
from tierwise.router.observability.logs import configure_logging, prompt_field
from tierwise.router.observability.metrics import Metrics
from tierwise.router.observability.tracing import Tracing, finish_request

__all__ = [
    "AdminServer",
    "Anomaly",
    "AnomalyChecker",
    "Metrics",
    "Tracing",
    "configure_logging",
    "find_anomalies",
    "finish_request",
    "prompt_field",
]
