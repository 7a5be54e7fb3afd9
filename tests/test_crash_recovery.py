"""kill -9 of a ``tierwise serve`` process under load, then a restart on the same store: nothing
that was acknowledged is lost (ARCHITECTURE.md, invariant 3).

Acknowledged means, per kind:

- spend record: a Complete or Route that returned OK. The ledger journals the record before the
  response is sent, so every such request_id must be in the ledger after the restart, with the
  cost the response reported.
- cache entry: the insert runs just after the answer, so a Complete alone acknowledges nothing;
  an entry counts once a later Route of the same prompt reported it as an exact hit (by entry id).
- judgment: a Feedback RPC that returned its feedback_id.

Workers keep sending Complete, then Route until the hit shows, then Feedback, on fresh prompts;
the server is killed with SIGKILL while they are in flight, and started again on the same store.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.harness import AUTH, OTHER_AUTH, config_dict
from tests.upstream import ScriptedUpstream, serve_in_thread
from tierwise.router.feedback.store import SqliteFeedbackStore
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.training.process import free_port, stop_process, wait_serving
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
WORKERS = 6
ACKED_BEFORE_KILL = 40  # acknowledged cache entries (and as many judgments) before the kill
HIT_WAIT_S = 10.0
LOAD_TIMEOUT_S = 60.0


@dataclass
class Acknowledged:
    """What the server confirmed before it was killed; filled by the workers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    spend: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # request_id -> (tenant, cost)
    entries: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (tenant, prompt) -> entry
    feedback: dict[str, tuple[str, str, float]] = field(
        default_factory=dict
    )  # id -> (tenant, request, score)

    def count(self) -> int:
        with self.lock:
            return min(len(self.entries), len(self.feedback))


TENANTS = {"acme": AUTH, "globex": OTHER_AUTH}


@dataclass
class Server:
    config_path: Path
    log_path: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, data: dict[str, Any]) -> None:
        self.port = free_port()
        data["server"]["port"] = self.port
        self.config_path.write_text(yaml.safe_dump(data))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tierwise.training.cli", "serve", "--config", str(self.config_path)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_serving(self.target, self.process, timeout_s=120)


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with serve_in_thread() as scripted:
        scripted.script(text="A durable answer.", input_tokens=30, output_tokens=12)
        yield scripted


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path / "config.yaml", tmp_path / "serve.log")
    yield running
    if running.process is not None:
        stop_process(running.process)


def worker(target: str, index: int, acked: Acknowledged, stop: threading.Event) -> None:
    """Complete, Route until the hit shows, Feedback; each on a fresh prompt, until the server is gone."""
    tenant = "acme" if index % 2 == 0 else "globex"
    auth = TENANTS[tenant]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)
        n = 0
        while not stop.is_set():
            n += 1
            prompt = f"Worker {index} asks question number {n}: what survives a crash?"
            messages = [pb.ChatMessage(role="user", content=prompt)]
            probe = pb.RouteRequest(messages=messages)
            # REFRESH: always call the upstream and store, even where a similar earlier prompt would hit.
            refresh = pb.CompleteRequest(messages=messages, cache_mode=pb.CACHE_MODE_REFRESH)
            try:
                response = stub.Complete(refresh, metadata=auth, timeout=10)
                with acked.lock:
                    acked.spend[response.request_id] = (tenant, Decimal(response.cost_usd_exact))
                deadline = time.monotonic() + HIT_WAIT_S
                while time.monotonic() < deadline:
                    decision = stub.Route(probe, metadata=auth, timeout=10)
                    with acked.lock:
                        acked.spend[decision.request_id] = (tenant, Decimal(0))
                    if decision.cache_hit and decision.cached.kind == "exact":  # this prompt's own entry
                        with acked.lock:
                            acked.entries[(tenant, prompt)] = (
                                decision.cached.entry_id,
                                decision.cached.content,
                            )
                        break
                    time.sleep(0.005)  # the insert runs just after the answer; poll for it
                score = (n % 5) / 4
                feedback = pb.FeedbackRequest(
                    request_id=response.request_id, score=score, source=pb.FEEDBACK_SOURCE_APP, comment=prompt
                )
                ack = stub.Feedback(feedback, metadata=auth, timeout=10)
                with acked.lock:
                    acked.feedback[ack.feedback_id] = (tenant, response.request_id, score)
            except grpc.RpcError:
                return  # killed: whatever was in flight was never acknowledged


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def test_kill_9_under_load_loses_nothing_acknowledged(
    upstream: ScriptedUpstream, server: Server, tmp_path: Path
) -> None:
    store = tmp_path / "var"
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    data["server"]["metrics_port"] = 0
    data["cache"] = {"enabled": True}
    server.start(data)

    acked = Acknowledged()
    stop = threading.Event()
    threads = [
        threading.Thread(target=worker, args=(server.target, i, acked, stop), daemon=True)
        for i in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: acked.count() >= ACKED_BEFORE_KILL, LOAD_TIMEOUT_S, "acknowledged entries and feedback")
    assert server.process is not None
    server.process.kill()  # SIGKILL while the workers have calls in flight
    assert server.process.wait(timeout=30) == -9
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)

    server.start(data)  # the same store path
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RouterStub(channel)
        # Cache: every acknowledged entry is served again, by the same id, with the same answer.
        lost_entries = []
        for (tenant, prompt), (entry_id, content) in acked.entries.items():
            request = pb.RouteRequest(messages=[pb.ChatMessage(role="user", content=prompt)])
            decision = stub.Route(request, metadata=TENANTS[tenant], timeout=10)
            if not decision.cache_hit or (decision.cached.entry_id, decision.cached.content) != (
                entry_id,
                content,
            ):
                lost_entries.append(prompt)
        assert not lost_entries, f"{len(lost_entries)} of {len(acked.entries)} cache entries lost"
        # Spend: the ledger knows every acknowledged request (journal replayed); Feedback says NOT_FOUND
        # for a request id it does not know, so a check feedback per request finds the lost ones.
        unknown = []
        for request_id, (tenant, _) in acked.spend.items():
            probe = pb.FeedbackRequest(request_id=request_id, score=1.0, source=pb.FEEDBACK_SOURCE_JUDGE)
            try:
                stub.Feedback(probe, metadata=TENANTS[tenant], timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                unknown.append(request_id)
        assert not unknown, f"{len(unknown)} of {len(acked.spend)} spend records lost"
    assert server.process is not None
    stop_process(server.process)  # graceful: the ledger writes everything to its store
    server.process = None

    sink = SqliteSpendSink(store / "spend.sqlite3")
    try:
        for request_id, (tenant, cost) in acked.spend.items():
            record = sink.get(request_id)
            assert record is not None, f"spend record {request_id} not in the store"
            assert (record.tenant, record.status) == (tenant, "OK")
            if cost:
                assert record.cost_usd == cost
    finally:
        sink.close()
    assert_feedback_kept(store / "feedback.sqlite3", acked)


def assert_feedback_kept(path: Path, acked: Acknowledged) -> None:
    async def stored() -> dict[str, tuple[str, str, float]]:
        feedback = SqliteFeedbackStore(path)
        try:
            found: dict[str, tuple[str, str, float]] = {}
            for tenant, request_id, _ in acked.feedback.values():
                for f in await feedback.for_request(tenant, request_id):
                    found[f.feedback_id] = (f.tenant, f.request_id, f.score)
            return found
        finally:
            await feedback.aclose()

    found = asyncio.run(stored())
    missing = {k: v for k, v in acked.feedback.items() if found.get(k) != v}
    assert not missing, f"{len(missing)} of {len(acked.feedback)} acknowledged judgments lost"
