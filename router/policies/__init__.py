"""Routing policies: which tier answers a request. Baselines (cheapest, strongest, random, length)
and the classifier policy over P(adequate | tier), built from the config by ``build_policy``."""
