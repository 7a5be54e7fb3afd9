"""The replay judge, registered as the ``replay`` judge kind (``tierwise.judges`` entry point).

For simulations: it returns the score RouterBench recorded for the model that
answered (it does not read the answer), and says so in its label.
"""

from __future__ import annotations

from decimal import Decimal

from tierwise.router.config import JudgeConfig
from tierwise.router.learning.judge import JudgeItem, Judgment, in_range
from tierwise.training.replay import RecordedAnswers, ReplayLookupError
from tierwise.training.routerbench import RouterBenchFormatError, csv_files, load_rows

REPLAY_LABEL = "replay judge (recorded scores)"


class ReplayJudge:
    """Scores from the recording: what RouterBench's graders gave the model that answered."""

    def __init__(self, answers: RecordedAnswers) -> None:
        self._answers = answers

    @property
    def label(self) -> str:
        return REPLAY_LABEL

    def max_cost_usd(self, item: JudgeItem) -> Decimal:
        return Decimal(0)

    async def judge(self, item: JudgeItem) -> Judgment:
        try:
            score = self._answers.recorded_score(item.messages, item.model)
        except ReplayLookupError as exc:
            return Judgment(None, self.label, exc.message)
        if score is None:
            return Judgment(None, self.label, f"no recorded score for {item.model!r}")
        checked = in_range(score)
        return Judgment(checked, self.label, "" if checked is not None else "recorded score out of range")


def build_replay_judge(settings: JudgeConfig) -> ReplayJudge:
    if settings.replay_data is None:
        raise ValueError("judge.kind 'replay' needs judge.replay_data")
    try:
        # Each file in its own layout: RouterBench's, or the wide one of a set like GSM8K.
        return ReplayJudge(RecordedAnswers(load_rows(csv_files(settings.replay_data), format="auto")))
    except RouterBenchFormatError as exc:
        raise ValueError(str(exc)) from None
