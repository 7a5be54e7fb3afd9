"""Traffic samples: the SQLite store, the background recorder, and samples written by a real server."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from tests.harness import AUTH, OTHER_AUTH, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.classifier.features import EMBEDDING_DIM, FEATURE_SPEC, STATISTIC_NAMES
from tierwise.router.config import TrafficConfig
from tierwise.router.learning.traffic import TrafficRecorder, TrafficSample
from tierwise.router.learning.traffic_sqlite import SqliteTrafficStore
from tierwise.v1 import tierwise_pb2 as pb


def sample(request_id: str, ts: float, tenant: str = "acme", prompt: str | None = None) -> TrafficSample:
    return TrafficSample(
        request_id=request_id,
        ts=ts,
        tenant=tenant,
        feature="chat",
        experiment="",
        arm="",
        tier="small",
        model="small-model",
        model_version="v1",
        cache_result="miss",
        input_tokens=12,
        turns=1,
        embedding=np.arange(EMBEDDING_DIM, dtype="<f4").tobytes(),
        statistics=np.ones(len(STATISTIC_NAMES), dtype="<f4").tobytes(),
        prompt=prompt,
    )


def test_store_round_trip_skips_duplicates_filters_and_purges(tmp_path: Path) -> None:
    store = SqliteTrafficStore(tmp_path / "traffic.sqlite3")
    try:
        assert store.write([sample("a", 100.0), sample("b", 200.0, "globex", "hi"), sample("c", 300.0)]) == 3
        assert store.write([sample("a", 100.0), sample("d", 50.0)]) == 1
        assert [s.request_id for s in store.samples(0, 1000)] == ["d", "a", "b", "c"]
        assert [s.request_id for s in store.samples(100, 300)] == ["a", "b"]
        assert [s.request_id for s in store.samples(0, 1000, tenant="globex")] == ["b"]
        got = store.get_many(["b", "zz"])
        assert list(got) == ["b"] and got["b"] == sample("b", 200.0, "globex", "hi")
        features = got["b"].features()
        assert features is not None and features.shape == (FEATURE_SPEC.size,)
        assert features[5] == 5.0 and features[-1] == 1.0
        assert store.purge_older_than(150, now=300.0) == 2  # d (50) and a (100)
        assert [s.request_id for s in store.samples(0, 1000)] == ["b", "c"]
    finally:
        store.close()


def test_a_store_written_before_prompt_keys_opens_and_reads_with_empty_keys(tmp_path: Path) -> None:
    path = tmp_path / "traffic.sqlite3"
    old = sqlite3.connect(path)
    columns = [f.name for f in fields(TrafficSample) if f.name != "prompt_key"]
    old.execute(f"CREATE TABLE traffic (request_id TEXT PRIMARY KEY, {', '.join(columns[1:])})")
    before = sample("old", 100.0)
    old.execute(
        f"INSERT INTO traffic VALUES ({', '.join('?' for _ in columns)})",
        [getattr(before, c) for c in columns],
    )
    old.commit()
    old.close()
    store = SqliteTrafficStore(path)
    try:
        assert store.write([replace(sample("new", 200.0), prompt_key="k" * 32)]) == 1
        got = store.get_many(["old", "new"])
    finally:
        store.close()
    assert got["old"] == before and got["old"].prompt_key == ""
    assert got["new"].prompt_key == "k" * 32


class FailingFirst:
    """A real SQLite store whose first ``failures`` writes raise, as a store outage would."""

    def __init__(self, store: SqliteTrafficStore, failures: int) -> None:
        self.inner, self.failures, self.calls = store, failures, 0

    def write(self, samples: Sequence[TrafficSample]) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("disk unavailable")
        return self.inner.write(samples)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _config(tmp_path: Path, upstream: ScriptedUpstream, **traffic: object) -> dict[str, object]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["learning"] = {"traffic": traffic}
    return data


@pytest.mark.asyncio
async def test_server_writes_a_sample_per_request_with_prompt_text_only_where_allowed(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script(text="Paris.")
        data = _config(tmp_path, upstream, store_prompts_tenants=["acme"], flush_interval_s=0.05)
        data["cache"] = {"enabled": True}  # the embedder runs: samples carry the request's embedding
        async with running_server(build_config(data)) as svc:
            request = pb.CompleteRequest(
                messages=[pb.ChatMessage(role="user", content="What is the capital of France?")],
                feature="geo",
            )
            mine = await svc.stub.Complete(request, metadata=AUTH)
            again = await svc.stub.Complete(request, metadata=AUTH)
            theirs = await svc.stub.Complete(
                pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="Name a prime number.")]),
                metadata=OTHER_AUTH,
            )
            traffic = svc.server.service.accounting.learning.traffic
            assert traffic is not None
            assert await traffic.flush(timeout_s=30)
            samples = {s.request_id: s for s in await traffic.samples(0, time.time() + 1)}
    acme, globex = samples[mine.request_id], samples[theirs.request_id]
    assert acme.tenant == "acme" and acme.feature == "geo" and acme.tier == "small"
    assert acme.prompt == "What is the capital of France?"
    assert globex.tenant == "globex" and globex.prompt is None  # globex did not opt in
    # One prompt, one key (training keeps its repeats on one side of the held-out split); no text in it.
    assert samples[again.request_id].prompt_key == acme.prompt_key != globex.prompt_key
    assert len(acme.prompt_key) == 32 and "France" not in acme.prompt_key
    assert acme.input_tokens == mine.decision.estimated_input_tokens
    assert acme.embedding is not None and len(acme.embedding) == 4 * EMBEDDING_DIM
    features = acme.features()
    assert features is not None and features.shape == (FEATURE_SPEC.size,)
    assert np.isclose(np.linalg.norm(features[:EMBEDDING_DIM]), 1.0, atol=1e-3)


@pytest.mark.asyncio
async def test_recorder_retries_a_failing_store_and_drops_beyond_its_queue(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script(text="ok")
        data = _config(tmp_path, upstream, max_queued=2, batch_size=10, flush_interval_s=0.05)
        async with running_server(build_config(data)) as svc:
            learning = svc.server.service.accounting.learning
            real = learning.traffic
            assert real is not None
            await real.aclose()  # swap in a recorder over a store that fails its first writes
            store = SqliteTrafficStore(tmp_path / "faulty.sqlite3")
            failing = FailingFirst(store, failures=2)
            recorder = TrafficRecorder(
                failing, TrafficConfig(max_queued=2, flush_interval_s=0.05), retry_initial_s=0.01
            )
            learning.traffic = recorder
            # Not started yet: the queue holds two samples and drops the third.
            ids = []
            for text in ("one", "two", "three"):
                reply = await svc.stub.Complete(
                    pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)]), metadata=AUTH
                )
                ids.append(reply.request_id)
            assert recorder.stats().dropped == 1 and recorder.stats().queued == 2
            await recorder.start()
            assert await recorder.flush(timeout_s=30)
            stats = recorder.stats()
            stored = [s.request_id for s in await recorder.samples(0, time.time() + 1)]
            await recorder.aclose()
    assert stats.write_failures == 2 and stats.written == 2
    assert sorted(stored) == sorted(ids[:2])
    reopened = SqliteTrafficStore(tmp_path / "faulty.sqlite3")
    assert all(
        s.embedding is None for s in reopened.samples(0, 1e12)
    )  # no cache, no classifier: no embedding
    reopened.close()
