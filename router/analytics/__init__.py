"""Cost analytics over the spend ledger: chargeback reports, cost per unit of quality, forecasts,
spend clusters and the built-in dashboard page. ``tierwise report`` and ``/dashboard`` read their
numbers from the same functions here, so the two always agree."""
