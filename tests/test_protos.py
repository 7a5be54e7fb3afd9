"""The committed stubs are what the .proto generates, and the contract keeps its promised shape."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tierwise.v1 import tierwise_pb2 as pb

HERE = Path(__file__).resolve().parents[1] / "protos"
_spec = importlib.util.spec_from_file_location("protos_generate", HERE / "generate.py")
assert _spec is not None and _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = tmp_path / "out"
    shutil.copytree(HERE, out, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    generate.generate(out)
    for committed in sorted((HERE / "tierwise" / "v1").glob("*_pb2*.py*")):
        fresh = out / "tierwise" / "v1" / committed.name
        assert fresh.read_text() == committed.read_text(), f"{committed.name} is stale: run `make protos`"


def test_optional_scalars_distinguish_unset_from_zero() -> None:
    request = pb.CompleteRequest()
    for name in ("tier", "quality_target", "latency_budget_ms", "max_tokens", "temperature", "max_age_s"):
        assert not request.HasField(name)
    request.temperature = 0.0
    assert request.HasField("temperature")


def test_promised_field_names_exist() -> None:
    def fields(message: type) -> set[str]:
        return {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    request_fields = {
        "messages",
        "feature",
        "user",
        "tier",
        "quality_target",
        "latency_budget_ms",
        "max_tokens",
    }
    request_fields |= {"temperature", "metadata"}
    assert request_fields <= fields(pb.RouteRequest) and request_fields <= fields(pb.CompleteRequest)
    assert {"request_id", "tier", "model", "reason", "p_adequate", "estimated_input_tokens"} <= fields(
        pb.RouteDecision
    )
    assert {"estimated_cost_usd", "cache_hit", "cached"} <= fields(pb.RouteDecision)
    assert {
        "request_id",
        "decision",
        "content",
        "finish_reason",
        "usage",
        "cost_usd",
        "latency",
        "attempts",
    } <= fields(pb.CompleteResponse)
    assert {"input_tokens", "output_tokens", "cached_input_tokens"} <= fields(pb.Usage)
    assert {"total_ms", "upstream_ms", "overhead_ms", "ttft_ms"} <= fields(pb.Latency)
    service = pb.DESCRIPTOR.services_by_name["Router"]
    assert {m.name for m in service.methods} >= {"Route", "Complete", "CompleteStream", "Feedback"}
