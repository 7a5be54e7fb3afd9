"""Interop: a Node.js client built from ``protos/`` alone calls a real ``tierwise serve`` process.

The client (tests/interop/node/client.mjs) loads only tierwise.proto at run time with
@grpc/proto-loader, so this proves the contract is complete for a non-Python caller:
auth metadata, proto3 optional presence, int64s, the stream's oneof, status codes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.harness import API_KEY, SMALL_PRICE, config_dict
from tests.upstream import ScriptedUpstream, serve_in_thread

# The demo's process helpers; they would be better public in a small module of their own.
from tierwise.training.process import NotServing, free_port, stop_process, wait_serving

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "tests" / "interop" / "node"
PROTO = REPO / "protos" / "tierwise" / "v1" / "tierwise.proto"
# Written into node_modules after a successful `npm ci`; `npm ci` deletes node_modules first.
STAMP = CLIENT_DIR / "node_modules" / ".tierwise-lock-sha256"
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")

TEXT = "Two plus two is four."
INPUT_TOKENS, OUTPUT_TOKENS, CACHED_TOKENS = 1234, 567, 200


def _lock_digest() -> str:
    lock = (CLIENT_DIR / "package-lock.json").read_bytes()
    return hashlib.sha256(lock + os.fsencode(shutil.which("node") or "")).hexdigest()


@pytest.fixture(scope="module")
def node_client() -> Path:
    """The client script, its dependencies installed from the lock file (again only when it changed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node.js interop client; install Node.js >= 18")
    digest = _lock_digest()
    # One installer at a time when several test processes share the checkout.
    with (CLIENT_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (STAMP.is_file() and STAMP.read_text() == digest):
            _npm_ci()
            STAMP.write_text(digest)
    return CLIENT_DIR / "client.mjs"


def _npm_ci() -> None:
    command = ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"]
    try:
        done = subprocess.run(command, cwd=CLIENT_DIR, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("`npm ci` in tests/interop/node took over 180 s; is the npm registry reachable?")
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        if any(code in output for code in NETWORK_ERRORS):
            pytest.fail(f"`npm ci` could not reach the npm registry (CI must be able to):\n{output}")
        pytest.fail(f"`npm ci` in tests/interop/node failed with status {done.returncode}:\n{output}")


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with serve_in_thread() as scripted:
        scripted.script(
            text=TEXT, input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS, cached_tokens=CACHED_TOKENS
        )
        yield scripted


@pytest.fixture
def server(upstream: ScriptedUpstream, tmp_path: Path) -> Iterator[str]:
    """A `tierwise serve` process on a free port; yields its target once health says SERVING."""
    config = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    config["server"]["port"] = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve.log"
    target = f"127.0.0.1:{config['server']['port']}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tierwise.training.cli", "serve", "--config", str(config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_serving(target, process, timeout_s=60)
        except NotServing as exc:
            pytest.fail(f"{exc}:\n{log_path.read_text()[-3000:]}")
        yield target
    finally:
        stop_process(process)  # SIGTERM (graceful drain), SIGKILL after 15 s


def _run_client(client: Path, target: str) -> dict[str, Any]:
    env = {**os.environ, "TIERWISE_API_KEY": API_KEY}
    done = subprocess.run(
        ["node", str(client), "--target", target, "--proto", str(PROTO)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, f"node client failed ({done.returncode}):\n{done.stderr}{done.stdout}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _expected_cost() -> Decimal:
    """The scripted usage at the small tier's configured prices (USD per million tokens)."""
    price = {name: Decimal(value) for name, value in SMALL_PRICE.items()}
    micro = (
        (INPUT_TOKENS - CACHED_TOKENS) * price["input_per_mtok"]
        + CACHED_TOKENS * price["cached_input_per_mtok"]
        + OUTPUT_TOKENS * price["output_per_mtok"]
    )
    return micro / Decimal(10**6)


def test_node_client_from_the_proto_alone_routes_completes_and_streams(
    node_client: Path, server: str, upstream: ScriptedUpstream
) -> None:
    result = _run_client(node_client, server)
    usage = {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "cached_input_tokens": CACHED_TOKENS,
    }
    cost = _expected_cost()

    route = result["route"]
    assert (route["tier"], route["model"], route["provider"]) == ("small", "small-model", "openai")
    assert route["reason"] == "cheapest" and route["cache_hit"] is False  # no tier pinned: unset stayed unset
    assert route["estimated_input_tokens"] > 0 and route["estimated_cost_usd"] > 0

    complete = result["complete"]
    assert complete["content"] == TEXT and complete["finish_reason"] == "stop"
    assert complete["usage"] == usage
    assert Decimal(complete["cost_usd_exact"]) == cost
    assert complete["cost_usd"] == pytest.approx(float(cost), abs=1e-12)
    assert (complete["decision"]["tier"], complete["decision"]["model"]) == ("small", "small-model")
    assert complete["decision"]["request_id"] == complete["request_id"] != route["request_id"]
    assert complete["attempts"] == [{"tier": "small", "model": "small-model", "ok": True}]

    stream = result["stream"]
    assert stream["content"] == TEXT and stream["deltas"] == len(TEXT.split())
    assert stream["usage"] == usage and Decimal(stream["cost_usd_exact"]) == cost
    assert stream["decision"]["tier"] == "small"

    assert result["unauthenticated"]["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0] == 16
    assert result["unauthenticated"]["details"]

    assert result["presence"]["unset_absent"] and result["presence"]["zero_kept"]
    # What the Node client left unset or set to zero reached the provider that way: Route called
    # no model, Complete and CompleteStream sent temperature 0 and, with no max_tokens of the
    # caller's, the tier's output bound (its max_output_tokens).
    sent = [request.body for request in upstream.requests]
    assert [(body["model"], body.get("stream", False)) for body in sent] == [
        ("small-model", False),
        ("small-model", True),
    ]
    assert [(body.get("temperature"), body.get("max_tokens")) for body in sent] == [(0, 512), (0, 512)]
