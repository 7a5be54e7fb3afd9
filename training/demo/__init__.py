"""``tierwise demo``: held-out RouterBench traffic through a real server, and the report that checks it."""
