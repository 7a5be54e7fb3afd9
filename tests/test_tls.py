"""gRPC over TLS: a client trusting the test CA connects; one without the CA, or (with mutual
TLS) without a client certificate, is refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.harness import AUTH, build_config, config_dict
from tests.upstream import ScriptedUpstream
from tierwise.router.server import TierwiseServer
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is needed to make test certificates"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=tierwise test CA", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=tierwise {name}", cwd=d)  # fmt: skip
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", *extra, cwd=d)  # fmt: skip


async def call(target: str, credentials: grpc.ChannelCredentials) -> pb.RouteDecision:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        stub = pb_grpc.RouterStub(channel)
        request = pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="hi")])
        decision: pb.RouteDecision = await stub.Route(request, metadata=AUTH, timeout=5)
        return decision


@pytest.mark.asyncio
@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_with_and_without_client_certificates(tmp_path: Path, mutual: bool) -> None:
    make_pki(tmp_path)
    ca = (tmp_path / "ca.pem").read_bytes()
    client_pair = ((tmp_path / "client.key").read_bytes(), (tmp_path / "client.pem").read_bytes())
    tls = {"cert_file": str(tmp_path / "server.pem"), "key_file": str(tmp_path / "server.key")}
    if mutual:
        tls["client_ca_file"] = str(tmp_path / "ca.pem")
    async with ScriptedUpstream() as upstream:
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["server"]["tls"] = tls
        server = TierwiseServer(await build_service(build_config(data)))
        port = await server.start()
        target = f"127.0.0.1:{port}"
        try:
            trusted = grpc.ssl_channel_credentials(ca, *client_pair)
            assert (await call(target, trusted)).tier == "small"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(target, grpc.ssl_channel_credentials())  # system roots: not our CA
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            if mutual:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(target, grpc.ssl_channel_credentials(ca))  # no client certificate
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert (await call(target, grpc.ssl_channel_credentials(ca))).tier == "small"
        finally:
            await server.stop(grace_s=1)


@pytest.mark.asyncio
async def test_unreadable_certificate_is_a_clear_config_error(tmp_path: Path) -> None:
    from tierwise.router.config import ConfigError

    async with ScriptedUpstream() as upstream:
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["server"]["tls"] = {"cert_file": str(tmp_path / "missing.pem"), "key_file": str(tmp_path / "k")}
        server = TierwiseServer(await build_service(build_config(data)))
        with pytest.raises(ConfigError, match=r"server\.tls"):
            await server.start()
        await server.stop(grace_s=0)
