"""A tierwise server in a child process for benchmarks: the load generator and the server then
do not share one interpreter (and its GIL), as with a real client.

A bench script calls :func:`run` from ``__main__``: run with ``--serve CONFIG`` (added here, hidden)
it is the child, serving the real service with an instant upstream until its stdin closes; run
plainly it starts itself as that child and hands the child's ports to its ``measure`` coroutine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from bench_ledger import instant_service  # the real service, its upstream answering at once

from tierwise.router.config import load_config
from tierwise.router.server import TierwiseServer

Ports = dict[str, int]


def write_config(root: Path, **sections: Any) -> Path:
    """A config of two tiers behind the instant upstream, the cache off, ``sections`` (server,
    auth, metrics, …) on top; written to ``root/tierwise.yaml``."""
    tier = {"provider": "openai", "base_url": "http://127.0.0.1:1", "max_output_tokens": 512}
    data = {
        "tiers": [
            {**tier, "name": "small", "model": "gpt-4o-mini", "price": {"input_per_mtok": "0.15"}},
            {**tier, "name": "large", "model": "gpt-4o", "price": {"input_per_mtok": "2.5"}},
        ],
        "store": {"path": str(root / "var")},
        "cache": {"enabled": False},
        "logging": {"level": "WARNING"},
        **sections,
    }
    path = root / "tierwise.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def _serve(config_path: Path) -> None:
    server = TierwiseServer(await instant_service(load_config(config_path)))
    await server.start()
    ports = {"port": server.port, "http_port": server.http_port, "metrics_port": server.metrics_port}
    print(json.dumps(ports), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(grace_s=1)


def _drive(script: str, config: Path, measure: Callable[[Ports], Awaitable[None]]) -> None:
    child = subprocess.Popen(
        [sys.executable, script, "--serve", str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        asyncio.run(measure(json.loads(child.stdout.readline())))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(30)


def run(
    script: str,
    parser: argparse.ArgumentParser,
    write_config: Callable[[argparse.Namespace, Path], Path],
    measure: Callable[[argparse.Namespace, Ports], Awaitable[None]],
) -> None:
    """Parse the bench's arguments, then be the child or drive one with a config written to a
    temporary folder."""
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return
    with tempfile.TemporaryDirectory() as tmp:
        _drive(script, write_config(args, Path(tmp)), lambda ports: measure(args, ports))
