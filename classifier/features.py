"""The classifier's input: one prompt embedding plus statistics of the prompt text.

Training and serving both call :func:`prompt_features`, so a model never sees
a vector built differently from the ones it was trained on. The embedding is
the request's shared one (the cache's), taken of :func:`embedding_input`.

Many prompts open with worked examples and end with the actual question, so
the statistics are taken twice: over the whole prompt and over its final
block (the text after the last blank line).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tierwise.cache.batching import embedding_text

FloatVector = npt.NDArray[np.float32]

FEATURE_VERSION = "prompt-stats-1"
EMBEDDING_DIM = 384

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+")
_CODE_MARKS = ("def ", "class ", "import ", "return ", "=>", "{", "}", ";", "()")
_MATH_SYMBOLS = re.compile(r"[=+*/^<>%]|\\frac|\\sqrt|\$")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-zA-Z][.)])\s", re.M)
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ha-h]\)\s", re.M)
# Vocabulary counts go through one lower-cased word tally (faster than an alternation regex
# per list); phrases of several words are counted as substrings of the lower-cased text.
_CODE_WORDS = frozenset(
    ["python", "function", "code", "program", "script", "implement", "algorithm", "regex", "sql"]
)
_MATH_WORDS = frozenset(
    ["calculate", "compute", "solve", "equation", "sum", "product", "percent", "probability", "average"]
)
_MATH_PHRASES = ("how many", "how much")
_CONSTRAINT_WORDS = frozenset(["must", "should", "only", "exactly", "without", "never", "always", "don't"])
_CONSTRAINT_PHRASES = ("do not", "at least", "at most", "no more than")
_NEGATIONS = frozenset(["not", "except", "never", "least", "no", "none", "false", "incorrect"])
_SHOT_MARKERS = re.compile(
    r"^\s*(?:answer|q|a|question|example|input|output|solution)\s*\d*\s*:", re.I | re.M
)
_WH_START = re.compile(r"^\s*(?:what|why|how|which|who|whom|whose|when|where)\b", re.I)
_WH_WORD = re.compile(r"\b(?:what|why|how|which|who)\b", re.I)
_CLAUSE_END = re.compile(r"([.?!])")
_YES_NO_START = re.compile(
    r"^\s*(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have)\b", re.I
)
_IMPERATIVE_START = re.compile(
    r"^\s*(?:write|explain|list|describe|summari[sz]e|translate|create|generate|give|find|compare|classify"
    r"|rewrite|implement|design|draft|tell|name|choose|select|print|complete|fill)\b",
    re.I,
)
_BLANK_LINE = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")

_WHOLE_NAMES = (
    "log_input_tokens",
    "log_chars",
    "log_words",
    "turns",
    "lines",
    "blocks",
    "repeated_line_share",
    "code_fences",
    "code_token_rate",
    "code_words",
    "math_symbol_rate",
    "math_words",
    "digit_rate",
    "list_lines",
    "option_lines",
    "constraint_words",
    "question_marks",
    "shot_markers",
    "uppercase_rate",
    "non_ascii_rate",
)
_FINAL_NAMES = (
    "final_log_chars",
    "final_words",
    "final_sentences",
    "final_mean_word_length",
    "final_long_word_share",
    "final_capitalised_share",
    "final_digit_rate",
    "final_option_lines",
    "final_option_mean_words",
    "final_negations",
    "final_question_marks",
    "final_has_blank",
    "final_wh_question",
    "final_yes_no_question",
    "final_imperative",
    "final_share_of_prompt",
    "final_example_overlap",
)
STATISTIC_NAMES: tuple[str, ...] = _WHOLE_NAMES + _FINAL_NAMES


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What a feature vector holds; a model is only served with the spec it was trained on."""

    version: str
    embedding_dim: int
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "embedding_dim": self.embedding_dim, "names": list(self.names)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FeatureSpec:
        names = data.get("names")
        version = data.get("version")
        dim = data.get("embedding_dim")
        if not isinstance(names, list) or not isinstance(version, str) or not isinstance(dim, int):
            raise ValueError("a feature spec needs 'version' (str), 'embedding_dim' (int) and 'names' (list)")
        return cls(version, dim, tuple(str(n) for n in names))


FEATURE_SPEC = FeatureSpec(
    version=FEATURE_VERSION,
    embedding_dim=EMBEDDING_DIM,
    names=tuple(f"emb_{i}" for i in range(EMBEDDING_DIM)) + STATISTIC_NAMES,
)


def embedding_input(prompt_text: str) -> str:
    """The text whose embedding the classifier reads: the cache's head+tail clip of the prompt."""
    return embedding_text(prompt_text)


def final_block(text: str) -> str:
    """The text after the last blank line: the question, when examples come first."""
    blocks = [b for b in _BLANK_LINE.split(text.strip()) if b.strip()]
    if not blocks:
        return ""
    final = blocks[-1]
    # A bare trailing cue ("Answer:") belongs to the question before it.
    if len(final) < 20 and len(blocks) > 1:
        final = blocks[-2] + "\n\n" + final
    return final


def _rate(count: int, length: int) -> float:
    return count / length if length else 0.0


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _vocabulary(
    text: str, words: list[str], vocabulary: frozenset[str], phrases: tuple[str, ...] = ()
) -> int:
    lowered = text.lower() if phrases else ""
    return sum(1 for w in words if w in vocabulary) + sum(lowered.count(p) for p in phrases)


def _whole_statistics(text: str, input_tokens: int, turns: int) -> list[float]:
    chars = len(text)
    words = [w.lower() for w in _words(text)]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    distinct = len(set(lines))
    blocks = [b for b in _BLANK_LINE.split(text) if b.strip()]
    return [
        math.log1p(max(input_tokens, 0)),
        math.log1p(chars),
        math.log1p(len(words)),
        float(turns),
        float(len(lines)),
        float(len(blocks)),
        1.0 - distinct / len(lines) if lines else 0.0,
        float(text.count("```")),
        _rate(sum(text.count(mark) for mark in _CODE_MARKS), chars) * 100.0,
        float(_vocabulary(text, words, _CODE_WORDS)),
        _rate(len(_MATH_SYMBOLS.findall(text)), chars) * 100.0,
        float(_vocabulary(text, words, _MATH_WORDS, _MATH_PHRASES)),
        _rate(sum(map(str.isdigit, text)), chars) * 100.0,
        float(len(_LIST_LINE.findall(text))),
        float(len(_OPTION_LINE.findall(text))),
        float(_vocabulary(text, words, _CONSTRAINT_WORDS, _CONSTRAINT_PHRASES)),
        float(text.count("?")),
        float(len(_SHOT_MARKERS.findall(text))),
        _rate(sum(map(str.isupper, text)), chars) * 100.0,
        _rate(chars - len(text.encode("ascii", "ignore")), chars) * 100.0,
    ]


def _example_overlap(final: str, text: str) -> float:
    """The largest word-set Jaccard between the final block and any earlier block (worked examples)."""
    final_words = {w.lower() for w in _words(final)}
    if not final_words:
        return 0.0
    best = 0.0
    for block in _BLANK_LINE.split(text[: max(len(text) - len(final), 0)]):
        words = {w.lower() for w in _words(block)}
        if words:
            best = max(best, len(final_words & words) / len(final_words | words))
    return best


def asks_wh_question(text: str) -> bool:
    r"""Whether a wh-word is followed by a "?" with no ".", "?" or "!" between them: what
    ``\b(?:what|why|how|which|who)\b[^.?!]*\?`` finds, in linear time. That pattern rescans to the
    next stop from every wh-word, quadratic on a long text without one (100k characters: 7 s)."""
    parts = _CLAUSE_END.split(text)  # clause, stop, clause, stop, ..., clause
    return any(
        stop == "?" and _WH_WORD.search(clause) for clause, stop in zip(parts[::2], parts[1::2], strict=False)
    )


def _final_statistics(final: str, text: str) -> list[float]:
    words = _words(final)
    alpha = [w for w in words if w.isalpha()]
    option_lines = [line for line in final.splitlines() if _OPTION_LINE.match(line)]
    option_words = [len(_words(line)) - 1 for line in option_lines]
    return [
        math.log1p(len(final)),
        float(len(words)),
        float(len(_SENTENCE_END.findall(final))),
        sum(len(w) for w in alpha) / len(alpha) if alpha else 0.0,
        _rate(sum(len(w) >= 9 for w in alpha), len(alpha)),
        _rate(sum(w[0].isupper() for w in alpha), len(alpha)),
        _rate(sum(map(str.isdigit, final)), len(final)) * 100.0,
        float(len(option_lines)),
        sum(option_words) / len(option_words) if option_words else 0.0,
        float(_vocabulary(final, [w.lower() for w in words], _NEGATIONS)),
        float(final.count("?")),
        1.0 if "_" in final else 0.0,
        1.0 if _WH_START.search(final) or asks_wh_question(final) else 0.0,
        1.0 if _YES_NO_START.search(final) else 0.0,
        1.0 if _IMPERATIVE_START.search(final) else 0.0,
        _rate(len(final), len(text)),
        _example_overlap(final, text),
    ]


def prompt_statistics(text: str, input_tokens: int, turns: int) -> list[float]:
    """The text statistics part of the feature vector, in ``STATISTIC_NAMES`` order."""
    return _whole_statistics(text, input_tokens, turns) + _final_statistics(final_block(text), text)


def prompt_features(
    embedding: npt.NDArray[np.float32], text: str, input_tokens: int, turns: int
) -> FloatVector:
    """The feature vector (``FEATURE_SPEC`` order) of one prompt.

    ``embedding`` is the request's embedding of ``embedding_input(text)``; ``text``
    the prompt (non-system turns joined by newlines), ``input_tokens`` its token
    count, ``turns`` its number of non-system messages.
    """
    return features_of(embedding, prompt_statistics(text, input_tokens, turns))


def features_of(embedding: npt.NDArray[np.float32], statistics: Sequence[float]) -> FloatVector:
    """The feature vector from the embedding and ``prompt_statistics`` made beforehand (elsewhere)."""
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.shape[0] != EMBEDDING_DIM:
        raise ValueError(f"embedding has {vector.shape[0]} dimensions, the features expect {EMBEDDING_DIM}")
    return np.concatenate([vector, np.asarray(statistics, dtype=np.float32)])
