"""What operators see: Prometheus metrics, OpenTelemetry tracing, structured logs, the admin HTTP
server (``/metrics``, ``/dashboard``) and the spend-anomaly checker."""
