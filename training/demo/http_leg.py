"""The demo's HTTP leg: a fixed slice of the held-out prompts (the traffic's first ``HTTP_SLICE``)
is sent again, as the same tenants with the same feature and tags, once through gRPC ``Complete``
and once through the official ``openai`` SDK to the OpenAI-compatible front (``server.http_port``),
the cache bypassed so each is routed and answered afresh. Every prompt must get the same tier,
model and exact cost from both fronts; their costs join the responses the closing reconciliation
adds up, so the ledger and the metrics are checked against both fronts' answers.

The two requests of a prompt go one after the other, each alone in the server: the embedder
micro-batches concurrent requests, and a different batch may move an embedding by float noise,
enough in principle to tip a classifier decision that sits on its boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import grpc
from rich.table import Table

from tierwise.training.demo.reconcile import ResponseCosts
from tierwise.training.routerbench import RouterBenchRow
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

# Prompts in the slice: enough to cover every tier the policy picks, few enough to add seconds.
HTTP_SLICE = 30


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


def labels(sent: Sent) -> dict[str, str]:
    return {"tenant": sent.tenant, "feature": sent.row.task, "team": sent.team}


async def _over_grpc(stub: pb_grpc.RouterStub, key: str, sent: Sent) -> Answer:
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content=sent.row.prompt)],
        feature=sent.row.task,
        metadata={"team": sent.team, "environment": "demo"},
        cache_mode=pb.CACHE_MODE_BYPASS,
    )
    reply = await stub.Complete(request, metadata=(("authorization", f"Bearer {key}"),), timeout=60)  # type: ignore[misc]
    return Answer(reply.decision.tier, reply.decision.model, Decimal(reply.cost_usd_exact))


async def drive_http(
    target: str, base_url: str, keys: Mapping[str, str], prompts: Sequence[Sent], responses: ResponseCosts
) -> LegResult:
    """Each prompt over gRPC (``target``), then over HTTP (``base_url``); both answers' costs go to ``responses``."""
    import openai  # the dev extra's: make demo installs it

    clients = {t: openai.AsyncOpenAI(base_url=base_url, api_key=k, max_retries=0) for t, k in keys.items()}
    pairs: list[tuple[Sent, Answer, Answer | str]] = []
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.RouterStub(channel)
            for sent in prompts:
                over_grpc = await _over_grpc(stub, keys[sent.tenant], sent)
                responses.add(labels(sent), over_grpc.cost)
                try:
                    reply = await clients[sent.tenant].chat.completions.create(
                        model="tierwise-auto",
                        messages=[{"role": "user", "content": sent.row.prompt}],
                        metadata={"team": sent.team, "environment": "demo"},
                        extra_body={"tierwise": {"feature": sent.row.task, "cache_mode": "bypass"}},
                        timeout=60,
                    )
                except openai.APIError as exc:
                    pairs.append((sent, over_grpc, f"{type(exc).__name__}: {exc}"))
                    continue
                own = (reply.model_extra or {})["tierwise"]
                over_http = Answer(own["tier"], own["model"], Decimal(own["cost_usd"]))
                responses.add(labels(sent), over_http.cost)
                pairs.append((sent, over_grpc, over_http))
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
