"""The semantic cache, the lowest layer: it imports no other tierwise package.

``embedder`` / ``batching`` compute one embedding per request; ``semantic_cache.SemanticCache``
looks up exact, then verified semantic matches (``verification`` and the ``verifier_*`` modules,
with the shipped pair model in ``models/verifier``) over a FAISS ``index``; entries live in an
``EntryStore`` (``sqlite_store`` embedded, ``redis_store`` shared, followed by ``replication``).
``backoff`` is the retry schedule every layer shares.
"""
