"""Hypothesis settings for the property and fuzz tests.

Profiles: ``ci`` (2,000 examples per test, no example database: every run starts fresh) and
``dev`` (200 examples, the local example database replays earlier failures first).

The profile is ``$TIERWISE_HYPOTHESIS_PROFILE`` when set; otherwise ``ci`` under ``make`` (which
exports ``MAKELEVEL`` to the commands it runs, so ``make test`` gets it) or when ``$CI`` is set,
and ``dev`` for a plain ``pytest`` run.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

PROFILE_ENV = "TIERWISE_HYPOTHESIS_PROFILE"

# Fuzzing a live server: example generation and the round trip are slow next to a pure function,
# and a single call's time varies with the machine, so there is no per-example deadline.
_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": (
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ),
    "print_blob": True,
}

settings.register_profile("ci", max_examples=2000, database=None, derandomize=False, **_COMMON)
settings.register_profile("dev", max_examples=200, **_COMMON)


def profile_name() -> str:
    chosen = os.environ.get(PROFILE_ENV)
    if chosen:
        return chosen
    return "ci" if os.environ.get("MAKELEVEL") or os.environ.get("CI") else "dev"


def fuzz_settings(**overrides: Any) -> settings:
    """The selected profile, with per-test overrides (``max_examples`` scales with the profile)."""
    base = settings.get_profile(profile_name())
    scale = overrides.pop("share", None)
    if scale is not None:
        overrides["max_examples"] = max(10, round(base.max_examples * scale))
    return settings(base, **overrides)
