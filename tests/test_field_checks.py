"""The shared field checks on their own: which characters a name refuses, and the nesting scan
that runs before any JSON parse. (Through the server: ``test_caller_input``.)"""

from __future__ import annotations

import pytest

from tierwise.router.field_checks import InvalidRequest, check_json, check_printable, json_depth


@pytest.mark.parametrize(
    "char",
    [
        "\x00",
        "\t",
        "\n",
        "\x1b",
        "\x7f",
        "\x80",
        "\x9f",
        "\u061c",
        "\u200f",
        "\u2028",
        "\u202a",
        "\u202e",
        "\u2066",
        "\u2069",
    ],
)
def test_names_refuse_controls_separators_and_bidi_formatting(char: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_printable("feature", f"ab{char}c")
    assert str(caught.value) == (
        "feature: must not contain control or bidirectional-formatting characters; "
        f"found U+{ord(char):04X} at position 2"
    )


@pytest.mark.parametrize(
    "text",
    ["", "plain", "naïve résumé", "检索", "👩\u200d👩\u200d👧", "x\ufe0f", "soft\u00adhyphen", "\u00a0"],
)
def test_names_keep_printable_text_and_harmless_format_characters(text: str) -> None:
    check_printable("feature", text)


def test_prose_may_hold_tabs_and_newlines_but_not_escapes() -> None:
    check_printable("comment", "one\ttwo\nthree", prose=True)
    with pytest.raises(InvalidRequest):
        check_printable("comment", "one\rtwo", prose=True)
    with pytest.raises(InvalidRequest):
        check_printable("comment", "\x1b[31mred", prose=True)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0),
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["]]]]", "[[[["]', 1),
        (r'["\"[[[", {}]', 2),
        (r'["\\", [[]]]', 3),
        ('"unterminated [[[[', 0),
        ("[" * 5000, 5000),
    ],
)
def test_json_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert json_depth(text) == depth


def test_json_depth_over_the_limit_is_refused_before_parsing() -> None:
    check_json("tools_json", "[[[]]]", 3)
    with pytest.raises(InvalidRequest, match=r"^tools_json: nests 4 levels deep; the limit is 3$"):
        check_json("tools_json", "[[[[]]]]", 3)
    # Deeper than the parser could recurse: refused by the scan, not a RecursionError.
    with pytest.raises(InvalidRequest, match="nests 100000 levels"):
        check_json("tools_json", "[" * 100_000 + "]" * 100_000, 32)
    with pytest.raises(InvalidRequest, match=r"^tools_json: is not JSON"):
        check_json("tools_json", "{'single': 'quotes'}", 32)
