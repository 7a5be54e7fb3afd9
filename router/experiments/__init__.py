"""A/B experiments: deterministic arm assignment, each arm's routing policy, the store that pins
an experiment's salt and weights, and the per-arm report with confidence intervals."""
