"""Checks every request validator shares: the failure type, caller strings that must print as
themselves, and JSON whose nesting is bounded before it is parsed.

Caller strings (feature, user, metadata, ids, tenant names) reach Prometheus labels, logs and
terminal tables. A character that moves the cursor or reorders text there would let a caller
forge or hide what an operator reads, so these are refused:

* C0 controls (U+0000-U+001F), DEL and the C1 controls (U+007F-U+009F): newlines, escape
  sequences;
* U+2028 and U+2029, which some log viewers and terminals take as line breaks;
* the bidirectional formatting characters (U+061C, U+200E, U+200F, U+202A-U+202E,
  U+2066-U+2069), which reorder the text around them ("Trojan Source").

Other invisible format characters (zero-width joiner, variation selectors, soft hyphen) stay
allowed: emoji and many scripts need them, and they neither break lines nor reorder text.
Prose fields (a feedback comment) may also hold tabs and newlines.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping

_BIDI_AND_SEPARATORS = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}]")
_UNPRINTABLE_PROSE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}]")

# A JSON string, escapes included. An unterminated one runs to the end, so no match is retried
# from inside it and the scan stays linear.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class InvalidRequest(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_printable(field: str, value: str, *, prose: bool = False) -> None:
    """Refuse the control and reordering characters listed in the module docstring."""
    found = (_UNPRINTABLE_PROSE if prose else _UNPRINTABLE).search(value)
    if found is not None:
        raise InvalidRequest(
            field,
            f"must not contain control or bidirectional-formatting characters; "
            f"found U+{ord(found.group()):04X} at position {found.start()}",
        )


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, found without recursion.

    Brackets inside JSON strings do not count. Malformed text gets a number too: the parse
    that follows refuses it.
    """
    # Every step runs in C (regex, map, accumulate): 100,000 characters take a few milliseconds.
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets), initial=0))


def check_json(field: str, text: str, max_depth: int) -> None:
    """``text`` must be empty or JSON nested at most ``max_depth`` deep.

    The depth is checked first: the parser (and every later ``json.dumps``, such as the cache
    key's canonical form) recurses once per level, and Python's recursion limit is not a
    caller's to reach.
    """
    if not text.strip():
        return
    depth = json_depth(text)
    if depth > max_depth:
        raise InvalidRequest(field, f"nests {depth} levels deep; the limit is {max_depth}")
    try:
        json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(field, f"is not JSON: {exc}") from None


def check_tags(field: str, tags: Mapping[str, str], max_chars: int) -> None:
    """A metadata map: non-empty keys, each key and value printable and at most ``max_chars``."""
    for key, value in tags.items():
        name = f"{field}[{key[:32]!r}]"
        if not key:
            raise InvalidRequest(field, "keys must not be empty")
        for what, text in ((f"{name} (the key)", key), (name, value)):
            if len(text) > max_chars:
                raise InvalidRequest(what, f"is {len(text)} characters; the limit is {max_chars}")
            check_printable(what, text)
