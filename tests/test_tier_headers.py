"""A tier's ``headers``: plain values, or ``{env: VAR}`` read from the environment at start so a
secret never sits in the config file. A missing variable refuses the start naming the tier, the
header and the variable; no header value shows in the config's repr, a config error, a log
record, a caller's error or a span."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from tests.harness import AUTH, build_config, config_dict, rpc_error, running_server
from tests.otlp_collector import Collector, collector  # noqa: F401 - the fixture
from tests.upstream import ScriptedUpstream
from tierwise.router.config import Config, ConfigError, TierConfig
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb

ORG_ENV = "TIERWISE_TEST_ORG_TOKEN"
SECRET = "org-secret-5b2d9a"
PLAIN = "plain-team-value-81c4"


def with_headers(data: dict[str, Any], tier: int, headers: dict[str, Any]) -> dict[str, Any]:
    data["tiers"][tier] = {**data["tiers"][tier], "headers": headers}
    return data


def request(text: str = "hello") -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("tier", "model"), [(0, "small-model"), (1, "large-model")], ids=["openai", "anthropic"]
)
async def test_a_header_from_the_environment_reaches_the_upstream(
    upstream: ScriptedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tier: int, model: str
) -> None:
    monkeypatch.setenv(ORG_ENV, SECRET)
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    config = build_config(with_headers(data, tier, {"X-Org": {"env": ORG_ENV}, "X-Team": PLAIN}))
    async with running_server(config) as svc:
        pinned = request()
        pinned.tier = config.tiers[tier].name
        await svc.stub.Complete(pinned, metadata=AUTH)
    (sent,) = upstream.requests_for(model)
    assert (sent.headers["x-org"], sent.headers["x-team"]) == (SECRET, PLAIN)


@pytest.mark.asyncio
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
async def test_a_missing_variable_refuses_the_start_naming_tier_header_and_variable(
    upstream: ScriptedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(ORG_ENV, raising=False)
    else:
        monkeypatch.setenv(ORG_ENV, value)
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    config = build_config(with_headers(data, 1, {"X-Org": {"env": ORG_ENV}}))
    with pytest.raises(ConfigError) as caught:
        await build_service(config)
    assert str(caught.value).startswith(
        f"tiers.large.headers.X-Org.env: environment variable {ORG_ENV} is not set"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("env", [ORG_ENV, "TIERWISE_TEST_KEY"], ids=["header", "api_key"])
async def test_a_variable_that_cannot_be_a_header_is_refused_without_quoting_it(
    upstream: ScriptedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    # The HTTP client would refuse it only on the first call, quoting it in an error callers see.
    monkeypatch.setenv(env, f"{SECRET}\r\nX-Injected: 1")
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    if env == ORG_ENV:
        data = with_headers(data, 0, {"X-Org": {"env": ORG_ENV}})
    else:
        data["tiers"][0]["api_key_env"] = env
    with pytest.raises(ConfigError, match=f"environment variable {env} holds a character") as caught:
        await build_service(build_config(data))
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Org": f"{SECRET}\n"}, "the value of X-Org holds a character other than printable ASCII"),
        ({"X-Org": f" {SECRET}"}, "the value of X-Org has leading or trailing whitespace"),
        ({"X Org": SECRET}, "'X Org' is not a header name"),
        ({"X-Org\n": SECRET}, "'X-Org\\n' is not a header name"),
        ({"X-Org": SECRET, "x-org": SECRET}, "header names are case-insensitive: ['x-org'] appear twice"),
        ({"X-Org": {"env": "not a name"}}, "tiers.0.headers.X-Org.from_env.env: String should match pattern"),
        ({"X-Org": {"variable": ORG_ENV}}, "tiers.0.headers.X-Org.from_env.variable: Extra inputs"),
        ({"X-Org": 5}, "tiers.0.headers.X-Org.plain: Input should be a valid string"),
    ],
)
def test_bad_headers_are_refused_naming_the_header_never_the_value(
    tmp_path: Path, headers: dict[str, Any], message: str
) -> None:
    data = with_headers(
        config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1"), 0, headers
    )
    with pytest.raises(ConfigError) as caught:
        build_config(data)
    assert message in str(caught.value)
    tier = data["tiers"][0]
    with pytest.raises(ValidationError) as direct:  # the model's own error, built without parse_config
        TierConfig(**tier)
    with pytest.raises(ValidationError) as whole:  # the whole document, built without parse_config
        Config(**{key: value for key, value in data.items() if key == "tiers"})
    for error in (caught.value, direct.value, whole.value):
        assert SECRET not in str(error)


def test_the_config_repr_and_dump_never_show_a_header_value(tmp_path: Path) -> None:
    data = config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1")
    config = build_config(with_headers(data, 0, {"X-Team": PLAIN, "X-Org": {"env": ORG_ENV}}))
    for shown in (
        repr(config),
        str(config),
        repr(config.tiers[0]),
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        assert PLAIN not in shown
        assert "X-Team" in shown and ORG_ENV in shown  # names stay visible: they are not secrets


@pytest.mark.asyncio
async def test_secrets_stay_out_of_logs_errors_and_spans(
    upstream: ScriptedUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    collector: Collector,  # noqa: F811
) -> None:
    caplog.set_level(logging.DEBUG)  # the HTTP client's own debug records too
    monkeypatch.setenv(ORG_ENV, SECRET)
    tracing = {"otlp_endpoint": collector.endpoint, "service_name": "tierwise-test"}
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, tracing=tracing)
    for tier in (0, 1):
        data = with_headers(data, tier, {"X-Org": {"env": ORG_ENV}, "X-Team": PLAIN})
    config = build_config(data)
    async with running_server(config) as svc:
        await svc.stub.Complete(request("fine"), metadata=AUTH)
        upstream.script(status=503)  # every tier fails: retries, fallback, warnings, an error to the caller
        error = await rpc_error(svc.stub.Complete(request("failing"), metadata=AUTH))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert len(upstream.requests) > 2 and all(r.headers["x-org"] == SECRET for r in upstream.requests)
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # the failures were logged
    for value in (SECRET, PLAIN):
        assert value not in (error.details() or "") and value not in caplog.text
        assert all(value not in repr(vars(r)) for r in caplog.records)
        assert collector.spans and all(value not in repr(span) for span in collector.spans)
