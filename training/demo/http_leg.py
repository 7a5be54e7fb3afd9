"""The demo's HTTP leg: a fixed slice of the held-out prompts the gRPC pass answered without the
cache is sent again, as the same tenants with the same feature and tags, through the official
``openai`` SDK to the OpenAI-compatible front (``server.http_port``), the cache bypassed so each
prompt is routed and answered afresh. Every one must get the tier, model and exact cost it got
over gRPC; their costs join the responses the closing reconciliation adds up, so the ledger and
the metrics are checked against both fronts' answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from rich.table import Table

from tierwise.training.demo.reconcile import ResponseCosts
from tierwise.training.routerbench import RouterBenchRow

# Prompts in the slice: enough to cover every tier the policy picks, few enough to add seconds.
HTTP_SLICE = 40


@dataclass(frozen=True, slots=True)
class Answer:
    """What one front answered for a prompt."""

    tier: str
    model: str
    cost: Decimal


@dataclass(frozen=True, slots=True)
class Sent:
    """A prompt of the slice, with the labels the gRPC pass sent it with."""

    row: RouterBenchRow
    tenant: str
    team: str


@dataclass
class LegResult:
    pairs: list[tuple[Sent, Answer, Answer | str]]  # the gRPC answer; the HTTP one, or its error

    @property
    def agreeing(self) -> int:
        return sum(1 for _, grpc_answer, http in self.pairs if http == grpc_answer)


def the_slice(sent: Sequence[Sent], grpc_answers: Mapping[str, Answer]) -> list[Sent]:
    """The first ``HTTP_SLICE`` prompts (in the traffic's order) the gRPC pass answered without the cache."""
    return [s for s in sent if s.row.sample_id in grpc_answers][:HTTP_SLICE]


async def drive_http(
    base_url: str,
    keys: Mapping[str, str],
    prompts: Sequence[Sent],
    grpc_answers: Mapping[str, Answer],
    responses: ResponseCosts,
    concurrency: int,
) -> LegResult:
    import openai  # the dev extra's: make demo installs it

    clients = {t: openai.AsyncOpenAI(base_url=base_url, api_key=k, max_retries=0) for t, k in keys.items()}
    pairs: list[tuple[Sent, Answer, Answer | str]] = []
    queue = list(prompts)

    async def worker() -> None:
        while queue:
            sent = queue.pop(0)
            try:
                reply = await clients[sent.tenant].chat.completions.create(
                    model="tierwise-auto",
                    messages=[{"role": "user", "content": sent.row.prompt}],
                    metadata={"team": sent.team, "environment": "demo"},
                    extra_body={"tierwise": {"feature": sent.row.task, "cache_mode": "bypass"}},
                    timeout=60,
                )
            except openai.APIError as exc:
                pairs.append((sent, grpc_answers[sent.row.sample_id], f"{type(exc).__name__}: {exc}"))
                continue
            own = (reply.model_extra or {})["tierwise"]
            answer = Answer(own["tier"], own["model"], Decimal(own["cost_usd"]))
            pairs.append((sent, grpc_answers[sent.row.sample_id], answer))
            labels = {"tenant": sent.tenant, "feature": sent.row.task, "team": sent.team}
            responses.add(labels, answer.cost)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        for client in clients.values():
            await client.close()
    return LegResult(pairs)


def leg_table(result: LegResult) -> tuple[Table, list[str]]:
    """Per front, the slice's requests, cost and tier mix; and each prompt the fronts disagree on."""
    table = Table(
        title=f"the same {len(result.pairs)} prompts over gRPC and HTTP (openai SDK), cache bypassed"
    )
    for column in ("front", "answered", "cost (USD)", "tiers"):
        table.add_column(column, justify="right" if column in ("answered", "cost (USD)") else "left")
    answers: dict[str, list[Answer]] = {
        "gRPC": [g for _, g, _ in result.pairs],
        "HTTP": [h for _, _, h in result.pairs if isinstance(h, Answer)],
    }
    for front, given in answers.items():
        tiers: dict[str, int] = {}
        for answer in given:
            tiers[answer.tier] = tiers.get(answer.tier, 0) + 1
        mix = ", ".join(f"{tier} {count}" for tier, count in sorted(tiers.items()))
        table.add_row(front, str(len(given)), f"{sum((a.cost for a in given), Decimal(0)):.6f}", mix)
    table.add_row("agree", f"{result.agreeing}/{len(result.pairs)}", "", "same tier, model and exact cost")
    problems = [
        f"{sent.row.sample_id}: gRPC {grpc_answer}, HTTP {http}"
        for sent, grpc_answer, http in result.pairs
        if http != grpc_answer
    ]
    return table, problems
