"""APGR, CPT, AIQ and cost-to-reach on hand-made curves with known answers; the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.classifier.neighbours import NeighbourVote
from tierwise.training.baselines import TaskPrior, pick_k
from tierwise.training.evaluate import Scorer, oracle_choices, oracle_pair_points, random_points
from tierwise.training.metrics import CurvePoint, aiq, apgr, cost_to_reach, cpt, nondecreasing_hull, pgr_curve


def test_apgr_of_known_curves() -> None:
    # the diagonal (a random router): 0.5
    assert apgr([(0.25, 0.625), (0.5, 0.75)], 0.5, 1.0) == pytest.approx(0.5)
    # all of the gap recovered at 20% strong calls: 0.1 + 0.8 = 0.9
    assert apgr([(0.2, 1.0)], 0.5, 1.0) == pytest.approx(0.9)
    # a router above the strong model: PGR 1.2 from 30% on
    assert apgr([(0.3, 1.1), (0.9, 1.1)], 0.5, 1.0) == pytest.approx(0.5 * 0.3 * 1.2 + 0.6 * 1.2 + 0.1 * 1.1)
    # nothing recovered until all calls are strong
    assert apgr([(0.5, 0.5), (0.99, 0.5)], 0.5, 1.0) == pytest.approx(0.005)


def test_cpt_of_known_curves() -> None:
    assert cpt([(0.2, 1.0)], 0.5, 1.0, 0.5) == pytest.approx(0.1)
    assert cpt([(0.2, 1.0)], 0.5, 1.0, 0.8) == pytest.approx(0.16)
    assert cpt([(0.4, 0.6), (0.6, 0.9)], 0.5, 1.0, 0.5) == pytest.approx(0.5)  # PGR 0.2 -> 0.8 between
    assert cpt([], 0.5, 1.0, 0.8) == pytest.approx(0.8)  # the diagonal
    assert cpt([(0.0, 0.8)], 0.5, 1.0, 0.5) == 0.0


def test_pgr_curve_keeps_the_best_point_per_share_and_checks_inputs() -> None:
    curve = pgr_curve([(0.5, 0.6), (0.5, 0.8), (0.0, 0.55)], 0.5, 1.0)
    assert curve == [(0.0, pytest.approx(0.1)), (0.5, pytest.approx(0.6)), (1.0, 1.0)]
    with pytest.raises(ValueError, match="must score above"):
        apgr([(0.5, 0.7)], 0.8, 0.8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apgr([(1.5, 0.7)], 0.5, 1.0)


def test_aiq_of_known_curves() -> None:
    assert aiq([(0.0, 0.5), (1.0, 1.0)], 0.0, 1.0) == pytest.approx(0.75)
    assert aiq([(0.0, 0.5), (0.5, 1.0)], 0.0, 1.0) == pytest.approx(0.875)
    # a point under the hull, and one past the best quality, change nothing
    assert aiq([(0.0, 0.5), (0.5, 0.6), (0.6, 1.0), (0.8, 0.9)], 0.0, 1.0) == pytest.approx(0.85)
    # the range is the single models' cost range; units do not matter
    assert aiq([(2.0, 0.4), (4.0, 0.8)], 2.0, 6.0) == pytest.approx((2 * 0.6 + 2 * 0.8) / 4)
    with pytest.raises(ValueError, match="empty"):
        aiq([(0.0, 0.5)], 1.0, 1.0)


def test_nondecreasing_hull() -> None:
    hull = nondecreasing_hull([(0.0, 0.5), (0.5, 0.6), (0.6, 1.0), (0.8, 0.9), (0.3, 0.5)])
    assert hull == [(0.0, 0.5), (0.6, 1.0)]
    assert nondecreasing_hull([(1.0, 0.7), (1.0, 0.9)]) == [(1.0, 0.9)]


def test_cost_to_reach() -> None:
    points = [CurvePoint(0.1, 1.0, 0.6, 0.1), CurvePoint(0.2, 2.0, 0.9, 0.3), CurvePoint(0.3, 3.0, 0.95, 0.6)]
    reached = cost_to_reach(points, 0.85)
    assert reached is not None and reached.cost == 2.0
    assert cost_to_reach(points, 0.99) is None


def test_random_router_recovers_half_the_gap_and_the_oracle_more_than_all() -> None:
    rng = np.random.default_rng(12345)
    scores = np.column_stack([rng.random(2000) < 0.6, rng.random(2000) < 0.8]).astype(np.float64)
    costs = np.column_stack([np.full(2000, 1.0), np.full(2000, 10.0)])
    scorer = Scorer(scores, costs, strongest=1)
    weak, strong = scores[:, 0].mean(), scores[:, 1].mean()
    randomised = random_points(scorer, 0, 1, 2000)
    # The random router's expected curve: the chord between the two tiers alone, at every share.
    assert apgr([(p.strong_share, p.quality) for p in randomised], weak, strong) == pytest.approx(0.5)
    for p in randomised:
        assert p.strong_share == pytest.approx(p.parameter)
        assert p.quality == pytest.approx(weak + p.parameter * (strong - weak))
        assert p.cost == pytest.approx(1.0 + 9.0 * p.parameter)
    oracle = oracle_pair_points(scorer, 0, 1)
    assert apgr([(p.strong_share, p.quality) for p in oracle], weak, strong) > 1.0
    choices = oracle_choices(scores, [0, 1])
    assert ((scores[:, 0] == 1) <= (choices == 0)).all()  # the weak model wherever it suffices


def test_task_prior_and_nearest_neighbours() -> None:
    labels = np.array([[1.0, 1.0], [0.0, np.nan], [1.0, 0.0], [1.0, 1.0]])
    prior = TaskPrior(["a", "a", "b", "b"], labels)
    np.testing.assert_allclose(prior.predict(["a", "b", "unseen"]), [[0.5, 1.0], [1.0, 0.5], [0.75, 2 / 3]])
    embeddings = np.eye(4, dtype=np.float32)
    knn = NeighbourVote(embeddings, labels, k=1)
    np.testing.assert_allclose(knn.predict(embeddings[[1, 2]]), [[0.0, 2 / 3], [1.0, 0.0]])
    assert pick_k(embeddings, labels, embeddings, labels, choices=(1, 3)) == 1
    with pytest.raises(ValueError, match="at least 1"):
        NeighbourVote(embeddings, labels, k=0)
