"""Small helpers the stores share: a PostgreSQL session with reconnects, batched SQLite inserts."""
