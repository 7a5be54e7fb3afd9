"""Durable quality signals for earlier requests (Feedback RPC and the sampled judge): SQLite,
PostgreSQL or Redis stores behind one ``FeedbackStore`` protocol."""
