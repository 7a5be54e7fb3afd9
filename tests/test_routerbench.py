from __future__ import annotations

import csv
import statistics
from collections import Counter
from pathlib import Path

import pytest

from tierwise.training.routerbench import (
    SPLITS,
    RouterBenchFormatError,
    load_rows,
    split_of,
    split_rows,
)

SMALL = "acme/small-chat"
STRONG = "gpt-4-1106-preview"
HAIKU_ANSWER = "Crisp leaves fall, 日本の秋 🍁\nwind hums through bare boughs —\nthe year exhales."

# (sample_id, prompt literal, eval_name, {model: (score, response literal, cost)})
TINY_ROWS = [
    (
        "t.1",
        "['What is 2 + 2?']",
        "math",
        {SMALL: ("0.0", "['5']", "0.0001"), STRONG: ("1.0", "['4']", "0.003")},
    ),
    (
        "t.2",
        "['Is this part one?', 'Is this part one?']",
        "repeat",
        {SMALL: ("1.0", "['Yes']", "0.0002"), STRONG: ("", "['Yes, it is.']", "0.004")},
    ),
    (
        "t.3",
        "['Write a haiku about autumn.']",
        "poetry",
        {SMALL: ("", "", ""), STRONG: ("1.0", repr([HAIKU_ANSWER]), "0.005")},
    ),
]


def write_routerbench_csv(path: Path) -> Path:
    """A tiny file in RouterBench's layout, with its pandas index column, list literals and empty cells."""
    models = [SMALL, STRONG]
    header = ["", "sample_id", "prompt", "eval_name", *models]
    header += [f"{m}|model_response" for m in models] + [f"{m}|total_cost" for m in models]
    header.append("oracle_model_to_route_to")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, (sample_id, prompt, eval_name, cells) in enumerate(TINY_ROWS):
            row = [str(index), sample_id, prompt, eval_name]
            row += (
                [cells[m][0] for m in models] + [cells[m][1] for m in models] + [cells[m][2] for m in models]
            )
            writer.writerow([*row, SMALL])
    return path


def _write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_reads_the_routerbench_layout(tmp_path: Path) -> None:
    rows = load_rows(write_routerbench_csv(tmp_path / "tiny.csv"))
    assert [r.sample_id for r in rows] == ["t.1", "t.2", "t.3"]
    first, second, third = rows
    assert first.prompt == "What is 2 + 2?"
    assert (first.eval_name, first.task, first.source) == ("math", "math", "tiny.csv")
    assert first.models == (SMALL, STRONG)
    assert first.scores == {SMALL: 0.0, STRONG: 1.0}
    assert first.responses == {SMALL: "5", STRONG: "4"}
    assert first.costs == {SMALL: 0.0001, STRONG: 0.003}
    # A multi-part prompt is joined; an empty score is missing, not 0.
    assert second.prompt == "Is this part one?\n\nIs this part one?"
    assert second.scores[STRONG] is None
    # An empty response cell means no recorded answer; an empty cost is unknown.
    assert third.responses == {STRONG: HAIKU_ANSWER}
    assert (third.scores[SMALL], third.costs[SMALL]) == (None, None)


def test_score_col_map_selects_and_renames(tmp_path: Path) -> None:
    rows = load_rows(write_routerbench_csv(tmp_path / "tiny.csv"), score_col_map={"strong": STRONG})
    assert rows[0].scores == {"strong": 1.0}
    assert rows[0].responses == {"strong": "4"}
    assert rows[0].costs == {"strong": 0.003}
    with pytest.raises(RouterBenchFormatError, match=r"no score column\(s\) \['nope'\]"):
        load_rows(tmp_path / "tiny.csv", score_col_map={"x": "nope"})


def test_directories_and_missing_paths(tmp_path: Path) -> None:
    write_routerbench_csv(tmp_path / "b.csv")
    write_routerbench_csv(tmp_path / "a.csv")
    assert [r.source for r in load_rows(tmp_path)][::3] == ["a.csv", "b.csv"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_rows(tmp_path / "absent.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.csv files"):
        load_rows(tmp_path / "empty")


@pytest.mark.parametrize(
    ("prompt", "score", "message"),
    [
        ("What is 2 + 2?", "1", r"bad\.csv:2: prompt is not a Python list literal"),
        ("[1, 2]", "1", "prompt is not a Python list literal"),
        ("['ok']", "1.5", r"column 'm': a score must lie in \[0, 1\]"),
        ("['ok']", "high", "column 'm': not a number"),
        ("['ok']", "nan", "not a finite number"),
    ],
)
def test_malformed_cells_name_file_line_and_column(
    tmp_path: Path, prompt: str, score: str, message: str
) -> None:
    path = _write(
        tmp_path / "bad.csv", [["sample_id", "prompt", "eval_name", "m"], ["s1", prompt, "e", score]]
    )
    with pytest.raises(RouterBenchFormatError, match=message):
        load_rows(path)


def test_missing_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", [["prompt", "m"], ["['x']", "1"]])
    with pytest.raises(RouterBenchFormatError, match=r"missing column\(s\) \['sample_id'\]"):
        load_rows(path)
    path = _write(tmp_path / "nomodels.csv", [["sample_id", "prompt"], ["a", "['x']"]])
    with pytest.raises(RouterBenchFormatError, match="no model score columns"):
        load_rows(path)
    with pytest.raises(ValueError, match="format must be"):
        load_rows(path, format="jsonl")  # type: ignore[arg-type]


def test_wide_layout(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "wide.csv",
        [
            ["prompt", "task", "cheap", "strong", "strong|model_response", "strong|total_cost"],
            ["Say hi", "chat", "true", "0.5", "['hi']", "0.01"],
            ["Say bye", "chat", "FALSE", "", "", ""],
            ["Say hi", "chat", "1", "0", "hello", "0.02"],
        ],
    )
    rows = load_rows(path, format="wide")
    assert [r.scores for r in rows] == [
        {"cheap": 1.0, "strong": 0.5},
        {"cheap": 0.0, "strong": None},
        {"cheap": 1.0, "strong": 0.0},
    ]
    # Wide cells are taken as they are: no list-literal unwrapping.
    assert rows[0].responses == {"strong": "['hi']"}
    assert rows[1].responses == {}
    assert rows[0].costs == {"cheap": None, "strong": 0.01}
    assert rows[0].task == "chat"
    # Without an id column the id is a hash of the prompt, so a repeated prompt keeps one id (and one split).
    assert rows[0].sample_id == rows[2].sample_id != rows[1].sample_id
    assert load_rows(path, format="wide", score_col_map={"tier-a": "cheap"})[1].scores == {"tier-a": 0.0}


def test_wide_layout_without_a_task_column_uses_the_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.csv", [["id", "prompt", "m"], ["q1", "Why?", "true"]])
    (row,) = load_rows(path, format="wide")
    assert (row.sample_id, row.eval_name, row.prompt) == ("q1", "qa", "Why?")


def test_split_is_a_stable_hash_of_the_id() -> None:
    ids = [f"sample-{i}" for i in range(20_000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    shares = Counter(splits)
    assert set(shares) == set(SPLITS)
    for name, expected in zip(SPLITS, (0.70, 0.15, 0.15), strict=True):
        assert abs(shares[name] / len(ids) - expected) < 0.015
    assert [split_of(i, seed="other") for i in ids] != splits
    assert {split_of(i, fractions=(1.0, 0.0, 0.0)) for i in ids[:500]} == {"train"}
    assert Counter(split_of(i, fractions=(0.5, 0.0, 0.5)) for i in ids)["validation"] == 0


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="split fractions"):
        split_of("x", fractions=fractions)


def test_split_rows_groups_by_id(tmp_path: Path) -> None:
    rows = load_rows(write_routerbench_csv(tmp_path / "tiny.csv"))
    grouped = split_rows(rows * 2)
    assert sum(len(v) for v in grouped.values()) == 6
    for name, members in grouped.items():
        assert all(split_of(r.sample_id) == name for r in members)


def test_real_routerbench_files(shared_data: Path) -> None:
    folder = shared_data / "routerbench"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    rows = load_rows(folder)
    assert Counter(r.eval_name for r in rows) == {"arc-challenge": 1039, "mbpp": 299, "winogrande": 887}
    assert all(len(r.models) == 11 and len(r.responses) == 11 for r in rows)
    assert not any(v.startswith("['") for r in rows for v in r.responses.values())
    arc = [r for r in rows if r.eval_name == "arc-challenge"]
    assert sum(r.scores[STRONG] is None for r in arc) == 8
    winogrande = [r for r in rows if r.eval_name == "winogrande"]
    for model, score, cost in [("mistralai/mistral-7b-chat", 0.56, 0.00007), (STRONG, 0.86, 0.0035)]:
        scores = [s for s in (r.scores[model] for r in winogrande) if s is not None]
        assert statistics.mean(scores) == pytest.approx(score, abs=0.01)
        assert statistics.mean(r.costs[model] or 0.0 for r in winogrande) == pytest.approx(cost, rel=0.02)
    # RouterBench repeats a few sample ids (a prompt stored once whole and once doubled): the split follows the id.
    assert sum(n - 1 for n in Counter(r.sample_id for r in rows).values()) == 7
    grouped = split_rows(rows)
    for name, share in zip(SPLITS, (0.70, 0.15, 0.15), strict=True):
        assert len(grouped[name]) / len(rows) == pytest.approx(share, abs=0.03)
