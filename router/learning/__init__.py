"""The learning loop's side of a running server: traffic samples of served requests, and a sampled
share judged (an LLM judge, or a judge a package registers under ``tierwise.judges``)."""

from tierwise.router.learning.judge import JudgeItem, Judgment, in_range
from tierwise.router.learning.loop import LearningLoop, build_learning
from tierwise.router.learning.traffic import TrafficSample
from tierwise.router.learning.traffic_sqlite import SqliteTrafficStore

__all__ = [
    "JudgeItem",
    "Judgment",
    "LearningLoop",
    "SqliteTrafficStore",
    "TrafficSample",
    "build_learning",
    "in_range",
]
