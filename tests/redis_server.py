"""A private redis-server for tests: a free port, a temporary directory, no persistence.

Use the ``redis_server_factory`` fixture (import it into the test module), or
the ``running_redis`` context manager outside pytest fixtures. ``kill()``,
``restart()`` (same port, empty data), ``pause()`` and ``resume()`` serve fault tests. Tests skip with a
clear reason when ``redis-server`` is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tierwise.training.process import free_port

START_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis_server() -> str:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server); shared-store tests need it"
        )
    return binary


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = directory
        self._binary = binary
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = (self.directory / f"redis-{self.port}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)  # polling the server's readiness, bounded by START_TIMEOUT_S

    def kill(self) -> None:
        """SIGKILL, as a crash would: connections drop, data is gone."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=START_TIMEOUT_S)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung host)."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self._process.terminate()
            try:
                self._process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """Start a redis-server in ``directory`` (skipping the test when none is installed); stop it after."""
    binary = require_redis_server()
    for attempt in range(3):  # the free port can be taken between probing and binding it
        server = RedisServer(directory, binary)
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Call it to start a private redis-server (as many as a test needs); all are stopped afterwards."""
    with contextlib.ExitStack() as stack:
        started = 0

        def start() -> RedisServer:
            nonlocal started
            started += 1
            directory = tmp_path / f"redis{started}"
            directory.mkdir()
            return stack.enter_context(running_redis(directory))

        yield start
