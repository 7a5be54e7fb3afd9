"""A router trained on a fixed RouterBench slice beats random and always-cheapest routing on APGR, on the
slice's test split (split by sample id): the pipeline learns something a coin cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trained_registry import priced_tiers_config, routerbench_slice
from tierwise.cache.embedder import SentenceEmbedder
from tierwise.classifier import load_model
from tierwise.router.config import Config
from tierwise.training.dataset import RoutingData, load_routing_data
from tierwise.training.evaluate import evaluate
from tierwise.training.fit import Candidate
from tierwise.training.routerbench import split_of
from tierwise.training.train import train

KEY = "sentence-transformers/all-MiniLM-L6-v2@384"
# 450 prompts, 73 of them in the test split. With 100 rows per file (about 50 test prompts) the margin
# below was not measurable: APGR 0.57 ± 0.06 over 8 slices, under the better of random and cheapest on 2.
ROWS_PER_FILE = 150
# The pair: Yi-34B trails gpt-4 by 0.31 on MBPP but by 0.06 on ARC and 0.10 on Winogrande (means over the
# whole files), a difference a router must read off the prompt. Between mixtral and gpt-4 the gap is about
# the same on every task, and on slices this small the trained router did not beat a random draw.
TIERS = [("weak", "zero-one-ai/Yi-34B-Chat", "0.8", "0.8"), ("strong", "gpt-4-1106-preview", "10", "30")]
# How the margin was chosen: the same training (one candidate, seeds 0-6) on 7 slices of 150 rows per file
# (the first 150, and 6 random draws of 150 among the first 200 of each file) put the utility router's
# APGR above the better of random and cheapest by 0.148 on average (sd 0.060, least 0.063; this slice:
# 0.195, APGR 0.695 against 0.5); three training seeds on one 200-row slice moved it by 0.018. 0.05 is below
# every slice measured and 1.6 sd under their mean. What it does not show is that the labels were learnt:
# on this pair the gap sits in MBPP's short prompts (the length router, strong calls for long prompts, scores
# 0.29 here), and the same training on labels shuffled across prompts passed on 3 of 5 shuffles.
MARGIN = 0.05


def pair_config() -> Config:
    return priced_tiers_config(TIERS)


@pytest.fixture(scope="module")
def data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path) -> RoutingData:
    root = tmp_path_factory.mktemp("routing")
    directory = routerbench_slice(shared_data, root / "data", ROWS_PER_FILE)
    return load_routing_data(
        directory, pair_config(), lambda: SentenceEmbedder(device="cpu"), KEY, embeddings
    )


def test_the_trained_router_beats_random_and_cheapest_on_the_test_split(
    data: RoutingData, tmp_path: Path
) -> None:
    config = pair_config()
    result = train(
        [],
        config,
        tmp_path / "registry",
        candidates=[Candidate("per_tier", 8, rounds=30)],
        prepared=data,
        seed=0,
    )
    model = load_model(result.directory, config.tier_names, device="cpu")
    report = evaluate(model, data, config, strong="strong", weak="weak")
    test_ids = [i for i, split in zip(data.sample_ids, data.splits, strict=True) if split == "test"]
    assert report["split"] == "test" and all(split_of(i) == "test" for i in test_ids)
    assert report["prompts"] > 60  # enough held-out prompts for the margin above to mean something
    routers = report["pair"]["routers"]
    trained = routers[f"classifier-{config.routing.classifier.rule}"]["apgr"]
    baseline = max(routers["random"]["apgr"], routers["cheapest"]["apgr"])
    assert trained >= baseline + MARGIN, (trained, routers["random"]["apgr"], routers["cheapest"]["apgr"])
