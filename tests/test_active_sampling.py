"""Active sampling: informative requests (unfamiliar, uncertain) drawn beside the uniform sample, the
judging budget's split between the two, and each judgment saying which draw it came from."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tierwise.router.config import SamplingConfig, parse_config
from tierwise.router.feedback.store import SqliteFeedbackStore
from tierwise.router.learning.active import JudgeBudget, draw, informative, sample_kind
from tierwise.router.learning.sampling import Sampler
from tierwise.router.outcome import Attempt, Completion, Decision, Latency
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, RequestSpec, TokenUsage
from tierwise.training.replay import RecordedAnswers
from tierwise.training.replay_judge import ReplayJudge
from tierwise.training.routerbench import RouterBenchRow


def decision(request_id: str, reason: str = "utility", p_small: float = 0.95) -> Decision:
    return Decision(
        request_id,
        "small",
        "m-small",
        "openai",
        reason,
        "classifier",
        10,
        Decimal("0.0001"),
        {"small": p_small},
    )


def test_informative_means_unfamiliar_or_uncertain() -> None:
    assert informative(decision("a", reason="unfamiliar:utility"), 0.1)
    assert informative(decision("b", p_small=0.55), 0.1) and not informative(decision("b", p_small=0.65), 0.1)
    assert not informative(decision("c"), 0.1)


def test_uniform_draws_come_first_and_active_ones_only_for_informative_requests() -> None:
    active = SamplingConfig(active_rate=1.0)
    assert sample_kind(decision("x", reason="unfamiliar:tier"), 0.0, active) == "active"
    assert sample_kind(decision("x"), 0.0, active) is None  # confident and familiar: not drawn
    assert sample_kind(decision("x", reason="unfamiliar:tier"), 1.0, active) == "uniform"
    assert sample_kind(decision("x", reason="unfamiliar:tier"), 0.0, SamplingConfig()) is None
    # the uniform draw is the one it always was (same request, same answer), independent of the active draw
    ids = [f"r{i}" for i in range(2000)]
    uniform = [i for i in ids if sample_kind(decision(i), 0.3, active) == "uniform"]
    assert 0.25 < len(uniform) / len(ids) < 0.35 and all(draw(i) < 0.3 for i in uniform)
    half = SamplingConfig(active_rate=0.5)
    drawn = [sample_kind(decision(i, reason="unfamiliar:utility"), 0.0, half) for i in ids]
    assert 0.45 < drawn.count("active") / len(ids) < 0.55


def test_active_draws_spend_only_their_share_and_never_the_uniform_sample_s() -> None:
    budget = JudgeBudget(Decimal("1.00"), "day", active_share=Decimal("0.6"))
    assert budget.reserve(Decimal("0.50"), "active")
    assert not budget.reserve(Decimal("0.20"), "active")  # 0.70 > 0.60 of the budget
    assert budget.reserve(Decimal("0.40"), "uniform")
    assert not budget.reserve(Decimal("0.20"), "uniform")  # 1.10 > the budget
    budget.settle(Decimal("0.50"), Decimal("0.30"), "active")  # cheaper than reserved: the rest comes back
    assert budget.spent == {"uniform": Decimal(0), "active": Decimal("0.30")}
    assert budget.reserved == {"uniform": Decimal("0.40"), "active": Decimal(0)}
    assert budget.reserve(Decimal("0.30"), "active")  # 0.30 spent + 0.30 = 0.60: fits exactly
    assert not budget.reserve(Decimal("0.01"), "active")
    budget.settle(Decimal("0.40"), Decimal("0.40"), "uniform")
    assert budget.spent_usd == Decimal("0.70") and budget.reserved_usd == Decimal("0.30")
    budget.seed({"active": Decimal("0.60")})  # a restart reads the window's spend back per kind
    assert not budget.reserve(Decimal("0.01"), "active") and budget.reserve(Decimal("0.01"), "uniform")
    with pytest.raises(ValueError, match="active_share"):
        JudgeBudget(Decimal(1), "day", active_share=Decimal("1.5"))


def completion(request_id: str, prompt: str, reason: str) -> tuple[RequestSpec, Completion]:
    spec = RequestSpec(tenant="acme", messages=(ChatMessage("user", prompt),))
    done = Completion(
        decision(request_id, reason=reason),
        "4",
        "stop",
        TokenUsage(5, 1),
        True,
        Decimal("0.0001"),
        Latency(10.0, 8.0, 8.0, 0.0),
        (Attempt("small", "m-small", True, 8.0),),
    )
    return spec, done


@pytest.mark.asyncio
async def test_each_judgment_says_which_draw_it_came_from(tmp_path: Path) -> None:
    config = parse_config(
        {
            "tiers": [
                {
                    "name": "small",
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:1/v1",
                    "model": "m-small",
                },
                {"name": "big", "provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m-big"},
            ],
            "learning": {
                "sampling": {"rate": 0.0, "active_rate": 1.0, "shadow": "none", "budget_usd": "1"},
            },
        }
    )
    rows = [RouterBenchRow("s1", "2+2?", "math", {"m-small": 1.0, "m-big": 1.0}, {"m-small": "4"}, {})]
    feedback = SqliteFeedbackStore(tmp_path / "feedback.sqlite3")
    sampler = Sampler(config, {}, ReplayJudge(RecordedAnswers(rows)), feedback, None, TokenCounter())
    await sampler.start()
    try:
        sampler.offer(*completion("familiar", "2+2?", "utility"))
        sampler.offer(*completion("strange", "2+2?", "unfamiliar:utility"))
        await sampler.drain()
    finally:
        await sampler.aclose()
    stats = sampler.stats()
    assert (stats["sampled"], stats["sampled_active"], stats["sampled_uniform"]) == (1, 1, 0)
    (judged,) = await feedback.for_request("acme", "strange")
    assert judged.metadata["sample"] == "active" and judged.score == 1.0
    assert await feedback.for_request("acme", "familiar") == []
    await feedback.aclose()
