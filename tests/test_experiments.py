"""Experiment assignment: deterministic, balanced by weight, sticky across restarts; a running
experiment's weights cannot change unless forced; the metadata override is checked; bad
experiment configs are refused with the key named."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from tests.harness import config_dict
from tierwise.router.config import ConfigError, ExperimentConfig, parse_config
from tierwise.router.experiments.assignment import Assigner, BadArmOverride, bucket, bucket_bounds
from tierwise.router.experiments.store import FILE_NAME, check_and_record, recorded_since
from tierwise.router.types import ChatMessage, RequestSpec

UNITS = 20_000


def experiment(weights: dict[str, float], **extra: Any) -> dict[str, Any]:
    arms = [{"name": name, "weight": weight} for name, weight in weights.items()]
    return {"name": "exp1", "control": next(iter(weights)), "arms": arms, **extra}


def spec(user: str = "", tenant: str = "acme", feature: str = "", **metadata: str) -> RequestSpec:
    return RequestSpec(
        tenant=tenant, messages=(ChatMessage("user", "hi"),), user=user, feature=feature, metadata=metadata
    )


def base(tmp_path: Path, *experiments: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return config_dict(
        tmp_path / "var",
        "http://127.0.0.1:1/v1",
        "http://127.0.0.1:1",
        experiments=list(experiments),
        **sections,
    )


def test_bucket_is_a_fixed_function_of_salt_and_unit() -> None:
    # Pinned values: a change here would move every running experiment's users between arms.
    assert [bucket("exp1", f"user\x00acme\x00u{i}") for i in range(4)] == [5163, 321, 1087, 2588]
    assert [bucket("exp2", f"user\x00acme\x00u{i}") for i in range(4)] != [5163, 321, 1087, 2588]


def test_bounds_follow_cumulative_weights() -> None:
    assert bucket_bounds([1, 1]) == (5000, 10000)
    assert bucket_bounds([70, 20, 10]) == (7000, 9000, 10000)
    assert bucket_bounds([1, 2]) == (3333, 10000)


@pytest.mark.parametrize("weights", [{"a": 1, "b": 1}, {"a": 70, "b": 20, "c": 10}, {"a": 1, "b": 1, "c": 1}])
def test_assignment_is_deterministic_and_balanced_by_weight(weights: dict[str, float]) -> None:
    config = ExperimentConfig.model_validate(experiment(weights))
    first, again = Assigner([config]), Assigner([config])  # a restart builds a new assigner
    counts: Counter[str] = Counter()
    for i in range(UNITS):
        request = spec(user=f"user-{i}")
        assignment = first.assign(request)
        assert assignment is not None and assignment == again.assign(request)
        counts[assignment.arm] += 1
    total = sum(weights.values())
    expected = [UNITS * w / total for w in weights.values()]
    observed = [counts[name] for name in weights]
    # Each arm within 3 % (relative) of its share, and no evidence against the weights.
    for o, e in zip(observed, expected, strict=True):
        assert abs(o - e) / e < 0.03, (observed, expected)
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_unit_is_the_user_else_the_tenant() -> None:
    assigner = Assigner([ExperimentConfig.model_validate(experiment({"a": 1, "b": 1}))])
    # Without a user every request of a tenant shares one arm.
    tenant_arms = {assigner.assign(spec(tenant="acme")) for _ in range(5)}
    assert len(tenant_arms) == 1
    users = {a.arm for i in range(200) if (a := assigner.assign(spec(user=f"u{i}"))) is not None}
    assert users == {"a", "b"}
    by_tenant = Assigner([ExperimentConfig.model_validate(experiment({"a": 1, "b": 1}, unit="tenant"))])
    assert len({by_tenant.assign(spec(user=f"u{i}")) for i in range(50)}) == 1


def test_filters_and_the_first_matching_experiment() -> None:
    only_chat = ExperimentConfig.model_validate(experiment({"a": 1, "b": 1}, features=["chat"]))
    everyone = ExperimentConfig.model_validate({**experiment({"x": 1, "y": 1}), "name": "exp2"})
    assigner = Assigner([only_chat, everyone])
    chat, search = assigner.assign(spec("u", feature="chat")), assigner.assign(spec("u", feature="search"))
    assert chat is not None and chat.experiment == "exp1"
    assert search is not None and search.experiment == "exp2"
    assert Assigner([only_chat]).assign(spec("u", feature="search")) is None


def test_override_forces_an_arm_and_a_bad_one_is_rejected() -> None:
    assigner = Assigner([ExperimentConfig.model_validate(experiment({"a": 1, "b": 1}, features=["chat"]))])
    natural = assigner.assign(spec("u1", feature="chat"))
    assert natural is not None
    other = "b" if natural.arm == "a" else "a"
    forced = assigner.assign(spec("u1", feature="chat", **{"tierwise-arm": other}))
    assert forced is not None and forced.arm == other and forced.forced
    with pytest.raises(BadArmOverride, match="has no arm 'zzz'"):
        assigner.assign(spec("u1", feature="chat", **{"tierwise-arm": "zzz"}))
    with pytest.raises(BadArmOverride, match="no experiment applies"):
        assigner.assign(spec("u1", feature="search", **{"tierwise-arm": "a"}))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"arms": [{"name": "a", "weight": 0}, {"name": "b", "weight": 1}]}, "arms.0.weight"),
        ({"arms": [{"name": "a", "weight": -1}, {"name": "b", "weight": 1}]}, "arms.0.weight"),
        ({"arms": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}], "control": "a"}, "duplicate arm"),
        ({"control": "nope"}, "control: 'nope' is not one of the arms"),
        ({"arms": [{"name": "a", "weight": 1, "policy": "smartest"}, {"name": "b", "weight": 1}]}, "policy"),
        ({"arms": [{"name": "a", "weight": 1}]}, "arms"),
        ({"unit": "device"}, "unit"),
        (
            {"arms": [{"name": "a", "weight": 1, "model_version": "v1"}, {"name": "b", "weight": 1}]},
            "model_version",
        ),
        ({"arms": [{"name": "a", "weight": 1, "cache": True}, {"name": "b", "weight": 1}]}, "cache"),
    ],
)
def test_bad_experiment_configs_name_the_key(tmp_path: Path, change: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(")):
        parse_config(base(tmp_path, {**experiment({"a": 1, "b": 1}), **change}))


def test_duplicate_experiment_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate experiment names"):
        parse_config(base(tmp_path, experiment({"a": 1, "b": 1}), experiment({"c": 1, "d": 1})))


def test_changed_weights_are_refused_unless_forced(tmp_path: Path) -> None:
    store = tmp_path / "var"
    first = parse_config(base(tmp_path, experiment({"a": 1, "b": 1})))
    check_and_record(store, first.experiments)
    started = recorded_since(store, "exp1")
    assert started > 0
    check_and_record(store, first.experiments)  # a restart with the same definition is fine
    # Arm policies may change: assignment does not depend on them.
    retuned = {
        "name": "exp1",
        "control": "a",
        "arms": [{"name": "a", "weight": 1, "policy": "strongest"}, {"name": "b", "weight": 1}],
    }
    check_and_record(store, parse_config(base(tmp_path, retuned)).experiments)
    for changed in (
        experiment({"a": 3, "b": 1}),
        experiment({"a": 1, "b": 1}, salt="new"),
        experiment({"a": 1, "b": 1}, unit="tenant"),
    ):
        with pytest.raises(
            ConfigError, match=r"experiments\[0\]: experiment 'exp1' is running with another definition"
        ):
            check_and_record(store, parse_config(base(tmp_path, changed)).experiments)
    assert json.loads((store / FILE_NAME).read_text())["exp1"]["weights"] == {"a": 1, "b": 1}
    forced = parse_config(base(tmp_path, experiment({"a": 3, "b": 1}, force=True)))
    check_and_record(store, forced.experiments)
    assert json.loads((store / FILE_NAME).read_text())["exp1"]["weights"] == {"a": 3, "b": 1}
    assert recorded_since(store, "exp1") >= started
    # The forced definition is now the running one: unforced restarts with it are fine.
    check_and_record(store, parse_config(base(tmp_path, experiment({"a": 3, "b": 1}))).experiments)
