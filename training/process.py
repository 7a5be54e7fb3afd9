"""Running tierwise processes from tools (the demo, tests): a free port, readiness, shutdown."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class NotServing(RuntimeError):
    """The server exited or did not report SERVING in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Poll grpc.health.v1 until SERVING; each check waits at most 0.5 s for the port to answer."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NotServing(f"tierwise serve exited with status {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
    raise NotServing(f"tierwise serve did not report SERVING within {timeout_s} s")


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGTERM (the server drains in-flight calls), then SIGKILL after ``grace_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)
