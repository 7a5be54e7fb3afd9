"""How long one try of an upstream call may wait.

A tier's own timeout: ``timeout_s`` while the tier has no latency history (fewer
than ``resilience.latency_window.min_samples`` recent successful calls); once it
has one, ``timeout_p99_factor`` x its recent p99, never under ``min_timeout_s``
nor over ``timeout_s`` (``adaptive_timeout: false`` keeps ``timeout_s`` always).
A tier that starts to hang is then given up on after a few of its usual call
times, not after the configured worst case. A unary call far longer than the
tier's usual ones (a much larger output) can be cut short by it: tiers whose
answers vary that much want a larger factor, or ``adaptive_timeout: false``. A
stream's timeout bounds each wait for a piece, so it follows time to first token.

A try's timeout also leaves room for the rest of the fallback chain inside the
caller's deadline: the later tiers keep what they would need (the sum of their
own timeouts) but never more than half of what is left, so a hanging tier
always leaves the next one time to answer, and a slow but healthy tier always
gets at least half of the time left. The last tier of the chain gets all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierwise.router.config import TierConfig

# The most of what is left of the deadline that the later tiers of the chain may keep.
LATER_TIERS_SHARE = 0.5


def tier_timeout_s(tier: TierConfig, p99_ms: float | None) -> float:
    """``tier``'s own timeout given its recent p99 (None: no history yet)."""
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
