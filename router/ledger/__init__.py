"""The spend ledger: every request's cost as a ``SpendRecord``, journalled on the request path and
written in batches to SQLite or PostgreSQL off it; the record builder and the report queries."""
