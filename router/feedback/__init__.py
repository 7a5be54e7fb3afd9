"""Durable quality signals for earlier requests (Feedback RPC and the sampled judge): SQLite,
PostgreSQL or Redis stores behind one ``FeedbackStore`` protocol."""

from tierwise.router.feedback.factory import feedback_table_exists, open_feedback_store, open_feedback_table
from tierwise.router.feedback.redis_store import RedisFeedbackStore
from tierwise.router.feedback.store import SOURCES, FeedbackRecord, FeedbackStore

__all__ = [
    "SOURCES",
    "FeedbackRecord",
    "FeedbackStore",
    "RedisFeedbackStore",
    "feedback_table_exists",
    "open_feedback_store",
    "open_feedback_table",
]
