"""Cost per unit of quality: what a tier (or experiment arm) spends per unit of judged quality.

Only requests with a judgment (Feedback RPC, a judge, the learning loop: a score in
[0, 1]) count. For a group, ``usd_per_quality`` = the judged requests' spend / the
sum of their scores, i.e. their mean cost over their mean quality: a tier that costs
twice as much but scores twice as high is as cost-effective. The ratio is what an
operator moves along when tuning the quality target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Protocol

from rich.table import Table

from tierwise.router.analytics.render import cell
from tierwise.router.ledger.reports import SpendSource
from tierwise.router.ledger.sql import SampleQuery
from tierwise.router.pricing import total_usd

QUALITY_DIMENSIONS = ("tier", "arm")
_PER_QUALITY_PLACES = Decimal("1e-9")


class JudgedScores(Protocol):
    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]: ...


@dataclass(frozen=True, slots=True)
class QualityRow:
    dimension: str  # tier | arm
    value: str
    requests: int
    spend_usd: Decimal
    judged: int
    judged_spend_usd: Decimal
    mean_quality: float | None
    usd_per_quality: Decimal | None  # judged spend / sum of judged scores; None without judged quality

    def as_dict(self) -> dict[str, object]:
        return {
            "dimension": self.dimension,
            "value": self.value,
            "requests": self.requests,
            "spend_usd": cell(self.spend_usd),
            "judged": self.judged,
            "judged_spend_usd": cell(self.judged_spend_usd),
            "mean_quality": None if self.mean_quality is None else round(self.mean_quality, 4),
            "usd_per_quality": None if self.usd_per_quality is None else cell(self.usd_per_quality),
        }


def usd_per_quality(judged_spend: Decimal, scores: Sequence[float]) -> Decimal | None:
    """The judged requests' spend per unit of their summed scores; None without judged quality."""
    score_sum = sum(scores)
    if score_sum <= 0:
        return None
    return (judged_spend / Decimal(repr(score_sum))).quantize(_PER_QUALITY_PLACES)


@dataclass
class _Acc:
    requests: int = 0
    spend: list[Decimal] = field(default_factory=list)
    judged_spend: list[Decimal] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def row(self, dimension: str, value: str) -> QualityRow:
        judged_spend = total_usd(self.judged_spend)
        return QualityRow(
            dimension,
            value,
            self.requests,
            total_usd(self.spend),
            len(self.scores),
            judged_spend,
            sum(self.scores) / len(self.scores) if self.scores else None,
            usd_per_quality(judged_spend, self.scores),
        )


async def cost_per_quality(
    source: SpendSource,
    scores: JudgedScores,
    since: float,
    until: float,
    filters: Mapping[str, str] | None = None,
    dimensions: Sequence[str] = QUALITY_DIMENSIONS,
) -> list[QualityRow]:
    """Per value of each dimension (tier, arm): spend, judged share, mean quality, USD per quality unit."""
    columns = ("tenant", "request_id", "cost_usd")
    samples = await source.samples(SampleQuery(since, until, list(dimensions), filters, columns))
    judged = await scores.mean_scores((s.values[0], s.values[1]) for s in samples)
    acc: dict[tuple[str, str], _Acc] = {}
    for sample in samples:
        tenant, request_id, cost = sample.values
        score = judged.get((tenant, request_id))
        for dim in dimensions:
            a = acc.setdefault((dim, sample.group[dim]), _Acc())
            a.requests += 1
            a.spend.append(cost)
            if score is not None:
                a.judged_spend.append(cost)
                a.scores.append(score)
    order = {d: i for i, d in enumerate(dimensions)}
    return [acc[k].row(*k) for k in sorted(acc, key=lambda k: (order[k[0]], k[1]))]


def quality_table(rows: Sequence[QualityRow]) -> Table:
    table = Table(title="cost per unit of judged quality")
    for name in (f.name for f in fields(QualityRow)):
        table.add_column(name, justify="left" if name in ("dimension", "value") else "right")
    for row in rows:
        table.add_row(*(cell(v) for v in row.as_dict().values()))
    return table
