"""Reading recorded model answers and scores: the RouterBench CSV layout and a generic wide layout.

RouterBench layout (one row per prompt): ``sample_id``, ``prompt`` (a Python
list literal of prompt strings), ``eval_name``, and per model M the columns
``M`` (score in [0, 1]), ``M|model_response`` (also a list literal) and
``M|total_cost`` (USD). Wide layout: a ``prompt`` column, optional
``sample_id``/``id`` and ``eval_name``/``task`` columns, and one score or
boolean column per model, with the same optional ``|`` companions.
An empty score or cost cell is missing, never 0. ``auto`` decides per file: a
header with ``sample_id``, ``eval_name`` and a ``|total_cost`` column is
RouterBench's, any other is wide (so RouterBench's tasks and GSM8K's wide
file load together).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Layout = Literal["routerbench", "wide", "auto"]
FileLayout = Literal["routerbench", "wide"]
LAYOUTS: tuple[Layout, ...] = ("routerbench", "wide", "auto")
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
DEFAULT_SPLIT_SEED = "tierwise-v1"
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)

RESPONSE_SUFFIX = "|model_response"
COST_SUFFIX = "|total_cost"
PART_SEPARATOR = "\n\n"  # between the elements of a multi-part prompt or response

_ID_COLUMNS = ("sample_id", "id")
_TASK_COLUMNS = ("eval_name", "task")
_NOT_MODELS = frozenset({"", "prompt", "oracle_model_to_route_to", *_ID_COLUMNS, *_TASK_COLUMNS})
_FIELD_SIZE_LIMIT = 1 << 30  # model answers can be long; csv's default limit is 128 KiB


class RouterBenchFormatError(ValueError):
    """A file does not follow the expected layout; the message names the file, line and column."""


@dataclass(frozen=True, slots=True)
class RouterBenchRow:
    sample_id: str
    prompt: str
    eval_name: str
    scores: dict[str, float | None]  # model (or tier) -> score in [0, 1]; None where the cell was empty
    responses: dict[str, str]  # only the models with a recorded answer
    costs: dict[str, float | None]  # USD per call; None where unknown
    source: str = ""  # the file it came from

    @property
    def task(self) -> str:
        return self.eval_name

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.scores)


@dataclass(frozen=True, slots=True)
class _Columns:
    sample_id: str | None
    task: str | None
    models: dict[str, str]  # output name -> score column


def csv_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The CSV files named by ``paths``; a directory stands for its ``*.csv`` files, sorted."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(item.glob("*.csv"))
            if not found:
                raise FileNotFoundError(f"no .csv files in {item}")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such file or directory: {item}")
    return files


def load_rows(
    paths: str | Path | Iterable[str | Path],
    format: Layout = "routerbench",
    score_col_map: Mapping[str, str] | None = None,
) -> list[RouterBenchRow]:
    """All rows of the given files (or directories of CSVs), in file order.

    ``score_col_map`` renames and selects models: {tier or name: score column};
    without it every model column of each file is read under its own name.
    """
    if format not in LAYOUTS:
        raise ValueError(f"format must be one of {LAYOUTS}, got {format!r}")
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_SIZE_LIMIT))
    rows: list[RouterBenchRow] = []
    for path in csv_files(paths):
        rows.extend(_read_file(path, format, score_col_map))
    return rows


def file_layout(header: Sequence[str], layout: Layout) -> FileLayout:
    """The layout of a file with this header: ``layout`` itself unless it is ``auto``."""
    if layout != "auto":
        return layout
    recorded_costs = any(c.endswith(COST_SUFFIX) for c in header)
    return "routerbench" if {"sample_id", "eval_name"} <= set(header) and recorded_costs else "wide"


def _read_file(
    path: Path, format: Layout, score_col_map: Mapping[str, str] | None
) -> Iterator[RouterBenchRow]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        layout = file_layout(reader.fieldnames or [], format)
        columns = _columns(path, reader.fieldnames or [], layout, score_col_map)
        for record in reader:
            where = f"{path}:{reader.line_num}"
            yield _row(record, columns, layout, path, where)


def _columns(
    path: Path, header: Sequence[str], layout: FileLayout, score_col_map: Mapping[str, str] | None
) -> _Columns:
    present = set(header)
    required = ("sample_id", "prompt") if layout == "routerbench" else ("prompt",)
    missing = [c for c in required if c not in present]
    if missing:
        raise RouterBenchFormatError(f"{path}: missing column(s) {missing} for the {layout} layout")
    candidates = [c for c in header if c not in _NOT_MODELS and "|" not in c and not c.startswith("Unnamed:")]
    if score_col_map is None:
        models = {c: c for c in candidates}
    else:
        unknown = sorted(c for c in score_col_map.values() if c not in present)
        if unknown:
            raise RouterBenchFormatError(f"{path}: no score column(s) {unknown}; model columns: {candidates}")
        models = dict(score_col_map)
    if not models:
        raise RouterBenchFormatError(f"{path}: no model score columns")
    return _Columns(
        sample_id=next((c for c in _ID_COLUMNS if c in present), None),
        task=next((c for c in _TASK_COLUMNS if c in present), None),
        models=models,
    )


def _row(
    record: Mapping[str, str | None], columns: _Columns, layout: FileLayout, path: Path, where: str
) -> RouterBenchRow:
    def cell(column: str) -> str:
        return record.get(column) or ""

    raw_prompt = cell("prompt")
    prompt = _literal_text(raw_prompt, where, "prompt") if layout == "routerbench" else raw_prompt
    if columns.sample_id is not None and cell(columns.sample_id).strip():
        sample_id = cell(columns.sample_id).strip()
    else:
        sample_id = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
    scores: dict[str, float | None] = {}
    responses: dict[str, str] = {}
    costs: dict[str, float | None] = {}
    for name, column in columns.models.items():
        scores[name] = _score(cell(column), f"{where} column {column!r}")
        if record.get(column + RESPONSE_SUFFIX):
            raw = cell(column + RESPONSE_SUFFIX)
            responses[name] = _unwrap_list_literal(raw) if layout == "routerbench" else raw
        costs[name] = _cost(cell(column + COST_SUFFIX), f"{where} column {column + COST_SUFFIX!r}")
    return RouterBenchRow(
        sample_id=sample_id,
        prompt=prompt,
        eval_name=cell(columns.task) if columns.task else path.stem,
        scores=scores,
        responses=responses,
        costs=costs,
        source=path.name,
    )


def _parts(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(part, str) for part in value):
        return PART_SEPARATOR.join(value)
    return None


def _literal_text(raw: str, where: str, what: str) -> str:
    try:
        text = _parts(ast.literal_eval(raw))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        text = None
    if text is None:
        raise RouterBenchFormatError(f"{where}: {what} is not a Python list literal of strings: {raw[:80]!r}")
    return text


def _unwrap_list_literal(raw: str) -> str:
    # RouterBench stores answers as "['text']"; a cell that is not such a literal is taken as it is.
    if not raw.lstrip().startswith("["):
        return raw
    try:
        text = _parts(ast.literal_eval(raw))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw
    return raw if text is None else text


def _number(raw: str, where: str) -> float | None:
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RouterBenchFormatError(f"{where}: not a number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise RouterBenchFormatError(f"{where}: not a finite number: {text!r}")
    return value


def _score(raw: str, where: str) -> float | None:
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return 1.0 if lowered == "true" else 0.0
    value = _number(raw, where)
    if value is not None and not 0.0 <= value <= 1.0:
        raise RouterBenchFormatError(f"{where}: a score must lie in [0, 1], got {value}")
    return value


def _cost(raw: str, where: str) -> float | None:
    value = _number(raw, where)
    if value is not None and value < 0:
        raise RouterBenchFormatError(f"{where}: a cost cannot be negative, got {value}")
    return value


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")


def split_of(
    sample_id: str, seed: str = DEFAULT_SPLIT_SEED, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> Split:
    """The split a sample belongs to, from a SHA-256 of (seed, id): stable across runs, files and row order."""
    _check_fractions(fractions)
    digest = hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def split_rows(
    rows: Iterable[RouterBenchRow],
    seed: str = DEFAULT_SPLIT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[Split, list[RouterBenchRow]]:
    """Rows grouped by ``split_of`` their sample id (rows sharing an id share a split)."""
    _check_fractions(fractions)
    grouped: dict[Split, list[RouterBenchRow]] = {name: [] for name in SPLITS}
    for row in rows:
        grouped[split_of(row.sample_id, seed, fractions)].append(row)
    return grouped
