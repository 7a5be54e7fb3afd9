"""A small model registry for server tests: two classifier versions trained on a slice of
RouterBench for the harness's tiers (small, large), the first one serving."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from tests.harness import build_config, config_dict
from tierwise.classifier.registry import ModelRegistry
from tierwise.router.config import Config, parse_config
from tierwise.router.service import shared_embedder
from tierwise.training.train import train

ROWS_PER_FILE = 30
SCORE_COLUMNS = {"small": "mistralai/mistral-7b-chat", "large": "gpt-4-1106-preview"}


def routerbench_slice(shared_data: Path, data: Path, rows_per_file: int = ROWS_PER_FILE) -> Path:
    """The first ``rows_per_file`` rows of each RouterBench CSV, written to ``data``."""
    data.mkdir(parents=True)
    for source in sorted((shared_data / "routerbench").glob("*.csv")):
        csv_head(source, data / source.name, rows_per_file)
    return data


def csv_head(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` rows of the CSV ``source``, written to ``target``."""
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        kept = [next(reader), *(row for _, row in zip(range(rows), reader, strict=False))]
    with target.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(kept)


def priced_tiers_config(tiers: Sequence[tuple[str, str, str, str]]) -> Config:
    """A config with these tiers (name, RouterBench model, USD per million input / output tokens), cheapest
    first, at an address nothing answers: for training and evaluating, not serving."""
    return parse_config(
        {
            "tiers": [
                {
                    "name": name,
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:1/v1",
                    "model": model,
                    "price": {"input_per_mtok": price_in, "output_per_mtok": price_out},
                }
                for name, model, price_in, price_out in tiers
            ]
        }
    )


def train_small_registry(shared_data: Path, root: Path, embeddings: Path) -> tuple[Path, list[str]]:
    """(registry directory, [serving version, second version]); prompt embeddings cached in ``embeddings``."""
    data = routerbench_slice(shared_data, root / "data")
    config = build_config(config_dict(root / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1"))
    versions = [
        train(
            data,
            config,
            root / "registry",
            score_col_map=SCORE_COLUMNS,
            seed=seed,
            cache_dir=embeddings,
            embedder=lambda: shared_embedder("cpu"),
        ).version
        for seed in (1, 2)
    ]
    ModelRegistry(root / "registry").promote(versions[0], force=True)
    return root / "registry", versions
