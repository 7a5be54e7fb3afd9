"""Cost-quality metrics of routers.

- APGR and CPT (RouteLLM, Ong et al. 2024): for a strong/weak pair, the
  performance gap recovered, PGR = (q - q_weak) / (q_strong - q_weak), as a
  function of the share of calls sent to the strong model. APGR is its area
  over shares 0..1 (0.5 for a random router); CPT(x) the smallest share whose
  PGR reaches x. Between measured shares the curve is linear: mixing two
  operating points at random realises every point between them.
- AIQ (RouterBench, Hu et al. 2024): the area under the router's
  non-decreasing convex hull in the cost-quality plane, over the cost range of
  the single models, divided by that range.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CurvePoint:
    parameter: float  # the quality target, lambda, share or threshold that produced it
    cost: float  # mean cost per prompt, USD
    quality: float  # mean score per prompt
    strong_share: float  # share of prompts sent to the strongest tier


def pgr_curve(
    points: Sequence[tuple[float, float]], weak_quality: float, strong_quality: float
) -> list[tuple[float, float]]:
    """(strong share, PGR) sorted by share, best PGR per share; unmeasured ends are all-weak and all-strong."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        raise ValueError(
            f"the strong model ({strong_quality}) must score above the weak one ({weak_quality})"
        )
    measured: dict[float, float] = {}
    for share, quality in points:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a share of strong calls must lie in [0, 1], got {share}")
        pgr = (quality - weak_quality) / gap
        measured[share] = max(measured.get(share, pgr), pgr)
    measured.setdefault(0.0, 0.0)
    measured.setdefault(1.0, 1.0)
    return sorted(measured.items())


def _area(curve: Sequence[tuple[float, float]]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(curve))


def apgr(points: Sequence[tuple[float, float]], weak_quality: float, strong_quality: float) -> float:
    """Average performance gap recovered over strong-call shares 0..1."""
    return _area(pgr_curve(points, weak_quality, strong_quality))


def cpt(
    points: Sequence[tuple[float, float]], weak_quality: float, strong_quality: float, target_pgr: float
) -> float:
    """The smallest share of strong calls at which the PGR curve reaches ``target_pgr``."""
    curve = pgr_curve(points, weak_quality, strong_quality)
    if curve[0][1] >= target_pgr:
        return curve[0][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if y1 >= target_pgr:
            return x0 + (x1 - x0) * (target_pgr - y0) / (y1 - y0)
    return 1.0


def nondecreasing_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper convex hull of (cost, quality) points, cut at its best quality (flat beyond)."""
    ordered = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for point in ordered:
        # Keep only right turns (the upper hull); pop points on or under the new chord.
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (point[1] - y0) - (y1 - y0) * (point[0] - x0) >= 0:
                hull.pop()
            else:
                break
        if hull and hull[-1][0] == point[0]:
            hull[-1] = (point[0], max(point[1], hull[-1][1]))
        else:
            hull.append(point)
    best = max(range(len(hull)), key=lambda i: (hull[i][1], -hull[i][0]))
    return hull[: best + 1]


def _hull_value(hull: Sequence[tuple[float, float]], cost: float) -> float:
    if cost <= hull[0][0]:
        return hull[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(hull):
        if cost <= x1:
            return y0 + (y1 - y0) * (cost - x0) / (x1 - x0)
    return hull[-1][1]


def aiq(points: Sequence[tuple[float, float]], min_cost: float, max_cost: float) -> float:
    """Normalised area under the non-decreasing hull of (cost, quality) over [min_cost, max_cost].

    Points should include the router's cheapest operating point; below the hull's first
    cost the curve counts as that point's quality.
    """
    if not points:
        raise ValueError("no points")
    if max_cost <= min_cost:
        raise ValueError(f"the cost range [{min_cost}, {max_cost}] is empty")
    hull = nondecreasing_hull(points)
    knots = sorted({min_cost, max_cost, *(x for x, _ in hull if min_cost < x < max_cost)})
    curve = [(x, _hull_value(hull, x)) for x in knots]
    return _area(curve) / (max_cost - min_cost)


def cost_to_reach(points: Sequence[CurvePoint], quality: float) -> CurvePoint | None:
    """The cheapest measured operating point whose quality reaches ``quality``.

    The point is picked on the curve it is given, so on a test curve it is chosen by looking at the
    test prompts: a best case for that split, to be labelled as read off it, not a held-out setting."""
    reaching = [p for p in points if p.quality >= quality]
    return min(reaching, key=lambda p: p.cost) if reaching else None
