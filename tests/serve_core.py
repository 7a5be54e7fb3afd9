"""Serve with the core install: ``tierwise serve`` answers a Route and a Complete, and ``tierwise
route`` decides, with the ONNX embedder, the guarded verifier (its cross-encoder on onnxruntime)
and, given a model registry, the classifier policy.

CI runs it in a venv holding ``pip install tierwise`` without extras (torch cannot be imported
there); tests/test_core_install.py runs it with the extras refused by ``tests/core_only.py``::

    python -m tests.serve_core --export var/onnx-embedder [--registry DIR] [--refuse-extras]

It needs the standard library, the core install and ``tests/upstream.py`` (aiohttp), nothing else:
no pytest. Exit status 0 when every check held; otherwise the first failed check is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from tests.core_only import CLI_WITHOUT_EXTRAS
from tests.upstream import serve_in_thread
from tierwise.training.process import free_port, stop_process, wait_serving
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "core-install-key"
ANSWER = "Reset it from the sign-in page: choose 'Forgot password' and follow the emailed link."
QUESTION = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"


class CheckFailed(RuntimeError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def core_config(work: Path, upstream_url: str, export: Path, registry: Path | None) -> dict[str, Any]:
    routing: dict[str, Any] = {"policy": "cheapest"}
    if registry is not None:
        routing = {"policy": "classifier", "classifier": {"registry": str(registry)}}
    return {
        "server": {"host": "127.0.0.1", "port": free_port(), "metrics_port": 0, "grace_period_s": 5},
        "auth": {
            "api_keys": [{"key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "tenant": "acme"}]
        },
        "tiers": [
            {
                "name": "small",
                "provider": "openai",
                "base_url": f"{upstream_url}/v1",
                "model": "small-model",
                "price": {"input_per_mtok": "0.5", "output_per_mtok": "1.5"},
                "max_output_tokens": 512,
            },
            {
                "name": "large",
                "provider": "anthropic",
                "base_url": upstream_url,
                "model": "large-model",
                "price": {"input_per_mtok": "3", "output_per_mtok": "15"},
                "max_output_tokens": 2048,
            },
        ],
        "routing": routing,
        "store": {"kind": "embedded", "path": str(work / "var")},
        "cache": {"embedder": "onnx", "onnx_embedder_dir": str(export.resolve()), "torch_threads": 1},
        "logging": {"level": "WARNING"},
    }


def tierwise_command(refuse_extras: bool) -> list[str]:
    """The command line's entry: this interpreter's, with the extras refused when asked."""
    if refuse_extras:
        return [sys.executable, "-c", CLI_WITHOUT_EXTRAS]
    return [sys.executable, "-c", "from tierwise.training.cli.app import main; main()"]


def exercise(target: str, classifier: bool) -> list[str]:
    """A Route, a Complete, an exact and a near repeat; returns what was observed, for the log."""
    seen: list[str] = []
    auth = (("authorization", f"Bearer {API_KEY}"),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)
        messages = [pb.ChatMessage(role="user", content=QUESTION)]
        decision = stub.Route(pb.RouteRequest(messages=messages), metadata=auth, timeout=30)
        check(decision.tier in ("small", "large"), f"Route chose no configured tier: {decision}")
        if classifier:
            check(set(decision.p_adequate) == {"small", "large"}, f"no classifier verdicts: {decision}")
            check(decision.model_version != "", f"no model version in {decision}")
        seen.append(
            f"Route: tier {decision.tier}, policy {decision.policy}, p_adequate {dict(decision.p_adequate)}"
        )
        reply = stub.Complete(pb.CompleteRequest(messages=messages), metadata=auth, timeout=30)
        check(reply.content == ANSWER, f"Complete answered {reply.content!r}")
        check(not reply.decision.cache_hit, "the first Complete was a cache hit")
        seen.append(
            f"Complete: {reply.decision.tier}, {reply.usage.input_tokens} tokens in, {reply.cost_usd_exact} USD"
        )
        # The answer is stored off the request path: a repeat sent before the insert landed is a miss
        # (answered upstream), so the repeat is sent again until it is served cached, for 5 s at most.
        deadline = time.monotonic() + 5
        while True:
            again = stub.Complete(pb.CompleteRequest(messages=messages), metadata=auth, timeout=30)
            if again.decision.cache_hit or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        check(
            again.decision.cache_hit and again.content == ANSWER, f"the repeat was not served cached: {again}"
        )
        near = [pb.ChatMessage(role="user", content=PARAPHRASE)]
        # The near repeat goes through the semantic lookup and the verifier (and its cross-encoder).
        paraphrase = stub.Complete(pb.CompleteRequest(messages=near), metadata=auth, timeout=30)
        check(paraphrase.content == ANSWER, f"the paraphrase was answered {paraphrase.content!r}")
        kind = paraphrase.decision.cached.kind if paraphrase.decision.cache_hit else "miss"
        seen.append(f"exact repeat: cached; paraphrase: {kind} ({paraphrase.decision.cached.similarity:.3f})")
    return seen


def run(export: Path, registry: Path | None, refuse_extras: bool) -> list[str]:
    tierwise = tierwise_command(refuse_extras)
    with serve_in_thread() as upstream, tempfile.TemporaryDirectory(prefix="tierwise-core-") as scratch:
        upstream.script(text=ANSWER)
        work = Path(scratch)
        config = core_config(work, upstream.base_url, export, registry)
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log = (work / "serve.log").open("wb")
        started = time.monotonic()
        server = subprocess.Popen(
            [*tierwise, "serve", "-c", str(config_path)], cwd=ROOT, stdout=log, stderr=log
        )
        try:
            wait_serving(f"127.0.0.1:{config['server']['port']}", server, timeout_s=120)
            seen = [f"serving after {time.monotonic() - started:.1f} s"]
            seen += exercise(f"127.0.0.1:{config['server']['port']}", registry is not None)
        except Exception:
            stop_process(server)
            log.close()
            sys.stderr.write((work / "serve.log").read_text(errors="replace"))
            raise
        stop_process(server)
        log.close()
        output = (work / "serve.log").read_text(errors="replace")
        check(server.returncode == 0, f"tierwise serve exited with {server.returncode}:\n{output}")
        check("refused import" not in output, f"the server tried an extra's module:\n{output}")
        routed = subprocess.run(
            [*tierwise, "route", "-c", str(config_path), QUESTION], cwd=ROOT, capture_output=True, text=True
        )
        check(routed.returncode == 0, f"tierwise route failed:\n{routed.stderr}")
        check(
            "refused import" not in routed.stderr, f"tierwise route tried an extra's module:\n{routed.stderr}"
        )
        seen.append(f"tierwise route: {json.loads(routed.stdout)['tier']}")
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="the ONNX embedder export to serve")
    parser.add_argument("--registry", type=Path, help="a classifier model registry (policy classifier)")
    parser.add_argument("--refuse-extras", action="store_true", help="refuse the extras' modules (tests)")
    args = parser.parse_args()
    try:
        seen = run(args.export, args.registry, args.refuse_extras)
    except CheckFailed as exc:
        print(f"core install check failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"core install: {line}" for line in seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
