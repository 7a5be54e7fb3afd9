"""How long one try of an upstream call may wait.

A tier's own timeout: ``timeout_s`` while the tier has no latency history (fewer
than ``resilience.latency_window.min_samples`` recent successful calls); once it
has one, ``timeout_p99_factor`` x its recent p99, never under ``min_timeout_s``
nor over ``timeout_s`` (``adaptive_timeout: false`` keeps ``timeout_s`` always).
A tier that starts to hang is then given up on after a few of its usual call
times, not after the configured worst case.

A unary call's duration grows with the tokens it generates, so its p99 is taken
over the tier's recent calls each projected to the try's output bound ``B`` (the
``max_tokens`` sent upstream): a call of ``n`` output tokens that took ``d``, its
first token after ``f`` (streamed; a unary call's ``f`` is unknown and taken as 0),
counts as ``f + (d - f) x max(1, B / n)``; one with no counted output is taken as
it is. The timeout is ``timeout_p99_factor`` x that p99, within [``min_timeout_s``,
``timeout_s``]. Projecting each call, rather than adding a p99 of fixed parts to a
p99 of per-token times, counts a unary call's duration once, not twice.

A bound no larger than the usual outputs gives the plain p99 of durations, so a
hanging tier asked for a short answer is left after a few usual call times; a
tier that answered 50 tokens in 0.8 s gets 3 x 0.8 x 20 = 48 s (``timeout_s`` at
most) for a bound of 1,000, so a legitimate long answer is not cut. Counting a
unary call's whole duration as per-token time errs long: under a large bound a
hang is left only after the time the tier could take to generate that much (a
stream, or a smaller ``max_tokens``, catches it sooner). A stream's timeout
bounds each wait for a piece, so it follows time to first token, not the bound.

A try's timeout also leaves room for the rest of the fallback chain inside the
caller's deadline: the later tiers keep what they would need (the sum of their
own timeouts, each for its own output bound) but never more than half of what is
left, so a hanging tier always leaves the next one time to answer, and a slow but
healthy tier always gets at least half of the time left. The last tier of the
chain gets all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierwise.router.config import TierConfig

# The most of what is left of the deadline that the later tiers of the chain may keep.
LATER_TIERS_SHARE = 0.5


def tier_timeout_s(tier: TierConfig, p99_ms: float | None) -> float:
    """``tier``'s own timeout given its recent p99 (None: no history yet), projected to the try's
    output bound for a unary call."""
    if p99_ms is None or not tier.adaptive_timeout:
        return tier.timeout_s
    floor = min(tier.min_timeout_s, tier.timeout_s)
    return min(tier.timeout_s, max(floor, tier.timeout_p99_factor * p99_ms / 1000))


def try_timeout_s(own_s: float, later_s: Sequence[float], remaining_s: float | None) -> float:
    """The timeout of one try: its tier's ``own_s``, cut so that the later tiers of the chain (whose
    own timeouts are ``later_s``) keep their time within ``remaining_s`` (None: no deadline)."""
    if remaining_s is None:
        return own_s
    kept = min(sum(later_s), remaining_s * LATER_TIERS_SHARE)
    return min(own_s, remaining_s - kept)
