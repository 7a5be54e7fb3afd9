"""Budgets: reserve a request's estimated cost before the call, settle the actual cost after it,
in one atomic store operation (SQLite embedded, Redis shared); soft limits degrade, alerts fire once
a period."""
