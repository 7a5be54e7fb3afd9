from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_routerbench import HAIKU_ANSWER, SMALL, STRONG, write_routerbench_csv
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage
from tierwise.training.process import free_port
from tierwise.training.replay import (
    RecordedAnswers,
    ReplayLookupError,
    ReplayUpstream,
    replay_upstream_command,
)
from tierwise.training.routerbench import RouterBenchRow, load_rows

REPO = Path(__file__).resolve().parents[1]
HAIKU_PROMPT = "Write a haiku about autumn."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("replay-data")
    write_routerbench_csv(folder / "tiny.csv")
    return folder


@pytest.fixture(scope="module")
def upstream(data_dir: Path) -> Iterator[ReplayUpstream]:
    server = ReplayUpstream(load_rows(data_dir))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(upstream: ReplayUpstream) -> Iterator[httpx.Client]:
    assert upstream.base_url is not None
    with httpx.Client(base_url=upstream.base_url, timeout=30) as http:
        yield http


def _chat(model: str, *contents: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": c} for c in contents], **extra}


def _events(response: httpx.Response) -> list[Any]:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_answers_with_the_recorded_response_and_counted_usage(client: httpx.Client) -> None:
    body = {
        "model": STRONG,
        "messages": [
            {"role": "system", "content": "Answer tersely."},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
    }
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == STRONG
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "4"}
    assert data["choices"][0]["finish_reason"] == "stop"
    messages = [ChatMessage("system", "Answer tersely."), ChatMessage("user", "What is 2 + 2?")]
    prompt_tokens = TokenCounter().count_messages(messages, STRONG)
    assert data["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 1,
        "total_tokens": prompt_tokens + 1,
    }


def test_model_by_short_name_and_path_without_v1(upstream: ReplayUpstream) -> None:
    assert upstream.base_url is not None
    root = upstream.base_url.removesuffix("/v1")
    response = httpx.post(f"{root}/chat/completions", json=_chat("small-chat", "What is 2 + 2?"), timeout=30)
    assert response.status_code == 200
    assert response.json()["model"] == SMALL
    assert response.json()["choices"][0]["message"]["content"] == "5"


def test_streams_chunks_then_usage_then_done(client: httpx.Client) -> None:
    body = _chat(STRONG, HAIKU_PROMPT, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [e["choices"][0]["delta"]["content"] for e in events[1:-2]]
    assert len(pieces) > 3  # a few tokens per chunk
    assert "".join(pieces) == HAIKU_ANSWER  # multi-byte characters survive chunk boundaries
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all(e["usage"] is None for e in events[:-1])
    assert events[-1]["choices"] == []
    completion_tokens = TokenCounter().count_text(HAIKU_ANSWER, model=STRONG)
    assert events[-1]["usage"]["completion_tokens"] == completion_tokens
    assert len({e["id"] for e in events}) == 1


def test_streams_without_usage_unless_asked(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/chat/completions", json=_chat(STRONG, "What is 2 + 2?", stream=True)
    ) as response:
        events = _events(response)
    assert all("usage" not in e for e in events)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "4"


def test_max_tokens_cuts_the_answer(client: httpx.Client) -> None:
    data = client.post("/chat/completions", json=_chat(STRONG, HAIKU_PROMPT, max_tokens=3)).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    assert HAIKU_ANSWER.startswith(data["choices"][0]["message"]["content"])


def test_matches_the_last_user_turn_or_all_user_turns(client: httpx.Client) -> None:
    conversation = {
        "model": STRONG,
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "  What is 2 + 2?\n"}]},
        ],
    }
    assert (
        client.post("/chat/completions", json=conversation).json()["choices"][0]["message"]["content"] == "4"
    )
    # The two-part RouterBench prompt, sent as two user turns.
    split = _chat(SMALL, "Is this part one?", "Is this part one?")
    assert client.post("/chat/completions", json=split).json()["choices"][0]["message"]["content"] == "Yes"


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_unknown_prompt_is_404(client: httpx.Client) -> None:
    error = _error(client.post("/chat/completions", json=_chat(STRONG, "What is 3 + 3?")), 404)
    assert error["code"] == "prompt_not_found"
    assert "What is 3 + 3?" in error["message"]


def test_unknown_model_is_404_listing_known_models(client: httpx.Client) -> None:
    error = _error(client.post("/chat/completions", json=_chat("gpt-9", "What is 2 + 2?")), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "'gpt-9'" in error["message"]
    assert SMALL in error["message"] and STRONG in error["message"]


def test_missing_recorded_response_is_404(client: httpx.Client) -> None:
    error = _error(client.post("/chat/completions", json=_chat(SMALL, HAIKU_PROMPT)), 404)
    assert error["code"] == "response_not_found"
    assert "t.3" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": STRONG, "messages": []}).encode(), "messages"),
        (json.dumps({"model": STRONG, "messages": [{"content": "x"}]}).encode(), "messages"),
        (json.dumps({"model": STRONG, "messages": [{"role": "user", "content": 5}]}).encode(), "messages"),
        (json.dumps(_chat(STRONG, "What is 2 + 2?", stream="yes")).encode(), "stream"),
        (json.dumps(_chat(STRONG, "What is 2 + 2?", max_tokens=0)).encode(), "max_tokens"),
    ],
)
def test_malformed_requests_are_400(client: httpx.Client, body: bytes, param: str | None) -> None:
    response = client.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert _error(response, 400)["param"] == param


def test_models_and_health(client: httpx.Client, upstream: ReplayUpstream) -> None:
    models = client.get("/models").json()
    assert [m["id"] for m in models["data"]] == [SMALL, STRONG]
    assert upstream.base_url is not None
    health = httpx.get(upstream.base_url.removesuffix("/v1") + "/healthz", timeout=30).json()
    assert health == {"status": "ok", "prompts": 3, "models": [SMALL, STRONG]}


def test_recorded_score_lookup(upstream: ReplayUpstream) -> None:
    assert upstream.recorded_score("What is 2 + 2?", STRONG) == 1.0
    assert upstream.recorded_score([ChatMessage("user", "What is 2 + 2?")], "small-chat") == 0.0
    assert upstream.recorded_score("Is this part one?\n\nIs this part one?", STRONG) is None  # empty cell
    answer = upstream.lookup(HAIKU_PROMPT, STRONG)
    assert (answer.sample_id, answer.text, answer.score, answer.cost_usd) == ("t.3", HAIKU_ANSWER, 1.0, 0.005)
    with pytest.raises(ReplayLookupError, match="no recorded prompt"):
        upstream.recorded_score("unseen", STRONG)
    with pytest.raises(ReplayLookupError, match="known models"):
        upstream.recorded_score("What is 2 + 2?", "nope")


def test_an_ambiguous_short_name_is_not_guessed() -> None:
    rows = [
        RouterBenchRow(
            "s", "p", "e", {"a/dup": 1.0, "b/dup": 0.0, "c/solo": 1.0}, {"a/dup": "A", "b/dup": "B"}, {}
        )
    ]
    answers = RecordedAnswers(rows)
    assert answers.resolve_model("solo") == "c/solo"
    assert answers.answer("p", "b/dup").text == "B"
    with pytest.raises(ReplayLookupError):
        answers.resolve_model("dup")


@pytest.mark.asyncio
async def test_serves_inside_a_running_event_loop(data_dir: Path) -> None:
    upstream = ReplayUpstream.from_data_dir(data_dir, latency_ms=1, stream_chunk_tokens=1)
    async with upstream.serve() as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        response = await http.post("/chat/completions", json=_chat(STRONG, HAIKU_PROMPT, stream=True))
        events = _events(response)
    content = [e["choices"][0]["delta"].get("content") for e in events]
    assert "".join(c for c in content if c) == HAIKU_ANSWER
    assert len(content) > TokenCounter().count_text(HAIKU_ANSWER) / 2  # about one token per chunk
    assert upstream.base_url is None


def test_start_stop_lifecycle(data_dir: Path, upstream: ReplayUpstream) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        upstream.start()
    assert upstream.base_url is not None
    taken_port = int(upstream.base_url.rsplit(":", 1)[1].removesuffix("/v1"))
    other = ReplayUpstream(load_rows(data_dir))
    with pytest.raises(RuntimeError, match="failed to start"):
        other.start(port=taken_port)
    other.stop()  # nothing runs: a no-op
    with other as base_url:
        assert httpx.get(f"{base_url}/models", timeout=30).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/models", timeout=30)
    with pytest.raises(ValueError, match="latency_ms"):
        ReplayUpstream([], latency_ms=-1)


def test_cli_command_reports_bad_data_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        replay_upstream_command(tmp_path / "absent", port=0)
    assert exited.value.code == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_cli_command_serves_until_stopped(data_dir: Path) -> None:
    port = free_port()
    code = f"from pathlib import Path; from tierwise.training.replay import replay_upstream_command as c; c(Path({str(data_dir)!r}), {port})"
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=60), "the server printed nothing within 60 s"
        line = process.stdout.readline()
        assert f"3 prompts, 2 models on http://127.0.0.1:{port}/v1" in line
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json=_chat(STRONG, "What is 2 + 2?")
        )
        assert reply.json()["choices"][0]["message"]["content"] == "4"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_replays_real_routerbench_answers(shared_data: Path) -> None:
    if not (shared_data / "routerbench").is_dir():
        pytest.skip(f"{shared_data / 'routerbench'} is absent")
    upstream = ReplayUpstream.from_data_dir(shared_data)  # finds the routerbench/ folder inside
    row = next(r for r in load_rows(shared_data / "routerbench" / "winograde_train.csv"))
    with upstream as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        for model in ("gpt-4-1106-preview", "mixtral-8x7b-chat"):
            reply = http.post("/chat/completions", json=_chat(model, row.prompt)).json()
            canonical = reply["model"]
            assert reply["choices"][0]["message"]["content"] == row.responses[canonical]
            assert upstream.recorded_score(row.prompt, model) == row.scores[canonical]
        assert len(http.get("/models").json()["data"]) == 11
