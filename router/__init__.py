"""The serving process: one gRPC server (``server``) over one request pipeline (``pipeline``), built
from the config by ``service.build_service``.

Top-level modules are the request path (server, service, pipeline, validation, wire, caching,
accounting, ...) and the vocabulary every subpackage shares (config, types, errors, outcome,
pricing, tokens). Each subpackage owns one axis (policies, providers, resilience, ledger,
budgets, feedback, experiments, learning, observability, analytics, storage); see
docs/architecture.md for what may import what. Nothing here imports ``tierwise.training``.
"""
